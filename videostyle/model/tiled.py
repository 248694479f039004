"""The frame objective's value and gradient evaluated tile by tile, exactly, in bounded memory.

Why it can be exact (issue 17):
    - The style terms depend on the whole frame only through each layer's Gram matrix, a sum over
      positions: a no-grad pass over the tiles accumulates the global Gram matrices, and with them the
      loss and the constant ``dL/dG``.
    - Given ``dL/dG``, the gradient at the features of any position needs only that position's features:
      ``dL/dF = (dL/dG + dL/dG^T) F / n``. So each tile is back-propagated alone through a surrogate
      whose gradient is that: ``sum(F_t * A F_t)`` with ``A = (dL/dG + dL/dG^T) / n`` and ``A F_t`` held
      constant.
    - The content terms are sums over positions (local), and the temporal, tv and range terms live in
      pixel space (no VGG): they are evaluated on the whole image.
    - A tile's interior features equal the whole frame's (:mod:`videostyle.model.tiling`). Summing each
      crop's pixel gradient, from its interior features only, gives the whole frame's gradient.

The optimiser still sees the whole image: only the VGG evaluation is tiled.
"""

from __future__ import annotations

import torch

from videostyle.model import losses
from videostyle.model.features import VGGEncoder
from videostyle.model.objective import new_content_shares
from videostyle.model.optimise import pixel_terms
from videostyle.model.tiling import (Tile, assemble_features, gram_count, interior_flat, interior_gram, layer_stride,
                                     plan_tiles)


class TiledObjective:
    """The value and gradient of :class:`~videostyle.model.optimise.FrameObjective`'s objective, VGG evaluated
    on tiles (see the module docstring); same constructor arguments plus ``tile`` and ``halo`` px
    (:func:`~videostyle.model.tiling.plan_tiles`).

    :meth:`loss_and_gradient` sets ``image.grad``. The peak memory is one crop's VGG activations instead
    of the frame's; the cost is one more forward pass per iteration over all crops but the last (the
    Gram pass), and the halos' overlap.
    """

    def __init__(self, encoder: VGGEncoder, content: torch.Tensor, targets, weights, temporal=(), fresh=None, *,
                 tile: int, halo: int):
        self.encoder, self.targets, self.weights = encoder, targets, weights
        self.temporal = tuple(temporal)
        self.tiles = plan_tiles(content.shape[-2], content.shape[-1], tile=tile, halo=halo)
        self.shape = content.shape
        self.content_targets = assemble_features(encoder, content, list(weights.content_layers), self.tiles)
        with torch.no_grad():
            self.content_powers = {layer: losses.power(t) for layer, t in self.content_targets.items()}
        # The new content's style term (objective.NewContentStyle): its positions' shares per layer.
        self.new_shares = new_content_shares(weights, fresh)
        self.new_totals = {layer: float(share.counted.sum()) for layer, share in self.new_shares.items()}

    def _content(self, feats: dict[str, torch.Tensor], t: Tile) -> torch.Tensor:
        """Tile ``t``'s share of the weighted content terms (its interior's squared errors over the
        whole frame's normaliser), from the crop's features ``feats``."""
        w = self.weights
        total = torch.zeros((), device=next(iter(feats.values())).device)
        for layer, lw in w.content_layers.items():
            s = layer_stride(layer)
            target = self.content_targets[layer]
            rows, cols = t.full(s)
            sq = (feats[layer][(..., *t.interior(s))] - target[..., rows, cols]).pow(2).sum()
            total = total + w.content * lw * sq / (target.numel() * (self.content_powers[layer] + losses.EPS))
        return total

    def loss(self, image: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(total, parts)`` of ``image`` (one no-grad pass over the tiles)."""
        return self._evaluate(image, gradient=False)

    def loss_and_gradient(self, image: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(total, parts)`` as :meth:`FrameObjective.__call__` gives them (0-d, detached, weighted),
        with ``image.grad`` set to the gradient of ``total``."""
        return self._evaluate(image, gradient=True)

    def _evaluate(self, image: torch.Tensor, *, gradient: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        style_layers = list(self.weights.style_layers)
        variable, image = image, image.detach()
        # The pixel-space terms on the whole image first: their whole-frame temporaries (about ten
        # 3 x H x W tensors with their backward) are freed before any crop's VGG graph exists.
        grad = torch.zeros_like(image)
        with torch.set_grad_enabled(gradient):
            x = image.clone().requires_grad_(True) if gradient else image
            pixel = pixel_terms(x, self.temporal, self.weights)
            if pixel and gradient:
                sum(pixel.values()).backward()
                grad += x.grad
        pixel = {name: value.detach() for name, value in pixel.items()}
        del x
        # Pass 1: the global Gram matrices, summed over the tiles' interiors. The last crop runs with
        # its graph kept, and is back-propagated first in pass 2: one forward pass fewer per iteration.
        kept: tuple[Tile, torch.Tensor, dict[str, torch.Tensor]] | None = None
        sums: dict[str, torch.Tensor] = {}
        new_sums: dict[str, torch.Tensor] = {}
        content_total = torch.zeros((), device=image.device)
        for i, t in enumerate(self.tiles):
            keep = gradient and i == len(self.tiles) - 1
            crop = t.crop(image).clone().requires_grad_(True) if keep else t.crop(image)
            with torch.set_grad_enabled(keep):
                feats = self.encoder(crop)
            if keep:
                kept = (t, crop, feats)
            with torch.no_grad():
                for layer in style_layers:
                    g = interior_gram(feats[layer], t, layer_stride(layer))
                    sums[layer] = sums[layer] + g if layer in sums else g
                for layer in self.new_shares:
                    flat = interior_flat(feats[layer], t, layer_stride(layer))
                    g = (flat * self._share(layer, t, "counted")) @ flat.T
                    new_sums[layer] = new_sums[layer] + g if layer in new_sums else g
                if not gradient:
                    content_total = content_total + self._content(feats, t)
            del feats
        style_total, surrogate_matrices = self._style(sums)
        parts = {"content": content_total, "style": style_total}
        if self.new_shares:
            parts["new_content_style"], new_matrices = self._new_content_style(new_sums)
        if gradient:
            # Pass 2: each crop back-propagated alone through the surrogate, its gradient summed.
            for t in [kept[0], *self.tiles[:-1]]:
                if kept is not None:  # dropped here, so its features go with this crop's backward pass
                    _, crop, feats = kept
                    kept = None
                else:
                    crop = t.crop(image).clone().requires_grad_(True)
                    with torch.enable_grad():
                        feats = self.encoder(crop)
                with torch.enable_grad():
                    surrogate = crop.new_zeros(())
                    for layer in style_layers:
                        flat = interior_flat(feats[layer], t, layer_stride(layer))
                        # sum(F * (A F)) with A F held constant has the gradient A F = (dG + dG^T) F / n,
                        # the true one, for one (C, C) x (C, P) product and none in the backward pass.
                        surrogate = surrogate + (flat * (surrogate_matrices[layer] @ flat.detach())).sum()
                    for layer in self.new_shares:  # the same, each position weighted by its moved share
                        flat = interior_flat(feats[layer], t, layer_stride(layer))
                        surrogate = surrogate + (flat * (new_matrices[layer] @ flat.detach())
                                                 * self._share(layer, t, "moved")).sum()
                    content = self._content(feats, t)
                    content_total = content_total + content.detach()
                    (surrogate + content).backward()
                del feats
                t.crop(grad).add_(crop.grad)
            parts["content"] = content_total
            variable.grad = grad
        parts.update(pixel)
        return sum(parts.values()), parts

    def _share(self, layer: str, t: Tile, which: str) -> torch.Tensor:
        """Tile ``t``'s interior positions' ``counted`` or ``moved`` shares of new content at ``layer``
        (:class:`~videostyle.model.objective.NewShare`), ``(1, P)`` in the order of
        :func:`~videostyle.model.tiling.interior_flat`."""
        rows, cols = t.full(layer_stride(layer))
        return getattr(self.new_shares[layer], which)[0, 0, rows, cols].reshape(1, -1)

    def _style(self, sums: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted style loss from the frame's Gram sums ``{layer: (C, C)}``, and per layer the
        surrogate's ``A = (dL/dG + dL/dG^T) / n`` ``(C, C)``, constant for pass 2."""
        h, w = self.shape[-2], self.shape[-1]
        return self._gram_terms(sums, self.weights.style, lambda layer, c: gram_count(layer, c, h, w))

    def _new_content_style(self, sums: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The same for the new content's term (objective.NewContentStyle) from its share-weighted Gram
        sums: ``n`` is C x the positions' total share."""
        return self._gram_terms(sums, self.weights.new_content,
                                lambda layer, c: c * self.new_totals[layer])

    def _gram_terms(self, sums: dict[str, torch.Tensor], weight: float, count) -> tuple[torch.Tensor,
                                                                                       dict[str, torch.Tensor]]:
        """``weight * sum_l lw_l * normalised_mse(G_l, target_l)`` with ``G_l = sums[l] / n_l``
        (``n_l = count(layer, C)``), and the surrogate matrices ``(dL/dG + dL/dG^T) / n_l``."""
        total = torch.zeros((), device=next(iter(sums.values())).device)
        matrices: dict[str, torch.Tensor] = {}
        for layer, summed in sums.items():
            n = count(layer, summed.shape[0])
            gram = (summed / n)[None].requires_grad_(True)
            with torch.enable_grad():
                term = weight * self.weights.style_layers[layer] * losses.normalised_mse(
                    gram, self.targets.grams[layer], self.targets.powers[layer])
                (d_gram,) = torch.autograd.grad(term, gram)
            matrices[layer] = (d_gram[0] + d_gram[0].T) / n
            total = total + term.detach()
        return total, matrices
