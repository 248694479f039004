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
    - The same holds within a crop for VGG's first block (two 3x3 convolutions and a 2x2 pooling): in
      fp32 on the CPU each crop is back-propagated from pool1 first, then the first block in row
      strips, each recomputed with 2 px of context and given pool1's gradient for its rows and
      relu1_1's surrogate for its own. The crop's full-resolution maps are never held with their graph.

The optimiser still sees the whole image: only the VGG evaluation is tiled.
"""

from __future__ import annotations

import torch

from videostyle.model import losses, tiling
from videostyle.model.features import VGGEncoder, run_layers
from videostyle.model.objective import new_content_shares
from videostyle.model.optimise import pixel_terms
from videostyle.model.tiling import (Tile, assemble_features, block1_strips, gram_count, interior_flat, interior_gram,
                                     layer_stride, plan_tiles)


class TiledObjective:
    """The value and gradient of :class:`~videostyle.model.optimise.FrameObjective`'s objective, VGG evaluated
    on tiles (see the module docstring); same constructor arguments plus ``tile`` and ``halo`` px
    (:func:`~videostyle.model.tiling.plan_tiles`).

    :meth:`loss_and_gradient` sets ``image.grad``. The peak memory is one crop's VGG activations instead
    of the frame's; the cost is one more forward pass per iteration over all crops but the last (the
    Gram pass), and the halos' overlap. ``strips`` (default: where :func:`~videostyle.model.tiling.block1_strips`
    says, as the memory plan assumes): the first block in strips, for one more forward pass of it.
    """

    def __init__(self, encoder: VGGEncoder, content: torch.Tensor, targets, weights, temporal=(), fresh=None, *,
                 tile: int, halo: int, strips: bool | None = None):
        self.encoder, self.targets, self.weights = encoder, targets, weights
        stack = [name for name, _ in encoder.stack.named_children()]
        self.strips = (block1_strips(stack, encoder.layers, encoder.precision, content.device.type)
                       if strips is None else strips)
        self.head, self.tail = encoder.split_after("pool1") if self.strips else ([], [])
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
        total = torch.zeros((), device=next(iter(feats.values())).device)
        for layer in self.weights.content_layers:
            s = layer_stride(layer)
            total = total + self._content_term(layer, feats[layer][(..., *t.interior(s))], *t.full(s))
        return total

    def _content_term(self, layer: str, part: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
        """``layer``'s weighted content term over the features ``part`` ``(1, C, r, c)``, which sit at the
        whole frame's ``rows, cols`` of that layer's map (0 when it is not a content layer)."""
        w = self.weights
        if layer not in w.content_layers:
            return part.new_zeros(())
        target = self.content_targets[layer]
        sq = (part - target[..., rows, cols]).pow(2).sum()
        return w.content * w.content_layers[layer] * sq / (target.numel() * (self.content_powers[layer] + losses.EPS))

    def _region_terms(self, layer: str, part: torch.Tensor, rows: slice, cols: slice,
                      style_matrices: dict[str, torch.Tensor], new_matrices: dict[str, torch.Tensor]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pass 2's ``(surrogate, content)`` terms of ``layer`` over the features ``part`` ``(1, C, r, c)``
        at the whole frame's ``rows, cols`` of that layer's map: a tile's interior, or a strip's rows of it."""
        flat = part.reshape(part.shape[1], -1)
        surrogate = part.new_zeros(())
        if layer in style_matrices:
            # sum(F * (A F)) with A F held constant has the gradient A F = (dG + dG^T) F / n, the true
            # one, for one (C, C) x (C, P) product and none in the backward pass.
            surrogate = surrogate + (flat * (style_matrices[layer] @ flat.detach())).sum()
        if layer in new_matrices:  # the same, each position weighted by its moved share
            surrogate = surrogate + (flat * (new_matrices[layer] @ flat.detach())
                                     * self._share(layer, rows, cols, "moved")).sum()
        return surrogate, self._content_term(layer, part, rows, cols)

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
            if keep:
                leaf, feats, head = self._graph(t.crop(image), head_features=True)
                kept = (t, leaf, feats)
                feats = {**feats, **head}
                del head
            else:
                with torch.no_grad():
                    feats = self.encoder(t.crop(image))
            with torch.no_grad():
                for layer in style_layers:
                    g = interior_gram(feats[layer], t, layer_stride(layer))
                    sums[layer] = sums[layer] + g if layer in sums else g
                for layer in self.new_shares:
                    flat = interior_flat(feats[layer], t, layer_stride(layer))
                    g = (flat * self._share(layer, *t.full(layer_stride(layer)), "counted")) @ flat.T
                    new_sums[layer] = new_sums[layer] + g if layer in new_sums else g
                if not gradient:
                    content_total = content_total + self._content(feats, t)
            del feats
        style_total, surrogate_matrices = self._style(sums)
        parts = {"content": content_total, "style": style_total}
        new_matrices: dict[str, torch.Tensor] = {}
        if self.new_shares:
            parts["new_content_style"], new_matrices = self._new_content_style(new_sums)
        if gradient:
            # Pass 2: each crop back-propagated alone through the surrogate, its gradient summed.
            for t in [kept[0], *self.tiles[:-1]]:
                if kept is not None:  # dropped here, so its features go with this crop's backward pass
                    _, leaf, feats = kept
                    kept = None
                else:
                    leaf, feats, _ = self._graph(t.crop(image), head_features=False)
                with torch.enable_grad():
                    surrogate = content = leaf.new_zeros(())
                    for layer, f in feats.items():  # with strips, relu1_1's terms are in _strip_terms
                        s = layer_stride(layer)
                        terms = self._region_terms(layer, f[(..., *t.interior(s))], *t.full(s),
                                                   surrogate_matrices, new_matrices)
                        surrogate, content = surrogate + terms[0], content + terms[1]
                    content_total = content_total + content.detach()
                    (surrogate + content).backward()
                del feats
                if self.strips:  # leaf is pool1: the first block back-propagated strip by strip
                    content_total = content_total + self._strips_backward(
                        t.crop(image), t.crop(grad), t, leaf.grad, surrogate_matrices, new_matrices)
                else:
                    t.crop(grad).add_(leaf.grad)
                del leaf
            parts["content"] = content_total
            variable.grad = grad
        parts.update(pixel)
        return sum(parts.values()), parts

    def _graph(self, crop: torch.Tensor, *, head_features: bool
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(leaf, features, head)``: the crop's read features with their graph back to ``leaf``: the crop
        itself, or with strips pool1, the first block run without a graph (``head``: its read features,
        relu1_1 when read and ``head_features``, for the Gram pass; else empty: pass 2 would hold a
        full-resolution map for nothing)."""
        if not self.strips:
            leaf = crop.clone().requires_grad_(True)
            with torch.enable_grad():
                return leaf, self.encoder(leaf), {}
        with torch.no_grad():
            pooled, head = run_layers(self.head, self.encoder.normalise(crop),
                                      self.encoder.layers if head_features else ())
        leaf = pooled.requires_grad_(True)
        with torch.enable_grad():
            return leaf, run_layers(self.tail, leaf, self.encoder.layers)[1], head

    def _strips_backward(self, crop: torch.Tensor, crop_grad: torch.Tensor, t: Tile, pooled_grad: torch.Tensor,
                         style_matrices: dict[str, torch.Tensor],
                         new_matrices: dict[str, torch.Tensor]) -> torch.Tensor:
        """Adds to ``crop_grad`` ``(1, 3, h, w)`` the gradient of the crop's first block, given pool1's
        ``pooled_grad``, strip by strip (:data:`~videostyle.model.tiling.STRIP_PX` rows, each with 2 px of
        context a side: two 3x3 convolutions' reach), with relu1_1's own terms for each strip's rows.
        Returns relu1_1's content term (detached; 0 when it is not a content layer)."""
        height = crop.shape[-2]
        content_total = crop.new_zeros(())
        for lo in range(0, height, tiling.STRIP_PX):
            hi = min(height, lo + tiling.STRIP_PX)
            a, b = max(0, lo - 2), min(height, hi + 2)  # a is even, so pool1's rows split with the strips
            strip = crop[..., a:b, :].detach().requires_grad_(True)
            with torch.enable_grad():
                pooled, feats = run_layers(self.head, self.encoder.normalise(strip), self.encoder.layers)
                p0, p1 = lo // 2, hi // 2
                term = (pooled[..., p0 - a // 2:p1 - a // 2, :] * pooled_grad[..., p0:p1, :]).sum()
                if "relu1_1" in feats:
                    surrogate, content = self._strip_terms(feats["relu1_1"], t, a, lo, hi, style_matrices,
                                                           new_matrices)
                    term = term + surrogate + content
                    content_total = content_total + content.detach()
                term.backward()
            crop_grad[..., a:b, :].add_(strip.grad)
        return content_total

    def _strip_terms(self, f: torch.Tensor, t: Tile, a: int, lo: int, hi: int, style_matrices, new_matrices
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """relu1_1's surrogate and content terms over the tile's interior positions in crop rows
        ``[lo, hi)``, from a strip's relu1_1 ``f`` ``(1, 64, rows, w)`` that starts at crop row ``a``."""
        r0, r1 = max(lo, t.y0 - t.cy0), min(hi, t.y1 - t.cy0)  # crop rows, within the interior
        if r0 >= r1:
            return f.new_zeros(()), f.new_zeros(())
        part = f[..., r0 - a:r1 - a, t.x0 - t.cx0:t.x1 - t.cx0]
        return self._region_terms("relu1_1", part, slice(t.cy0 + r0, t.cy0 + r1), slice(t.x0, t.x1),
                                  style_matrices, new_matrices)

    def _share(self, layer: str, rows: slice, cols: slice, which: str) -> torch.Tensor:
        """The ``counted`` or ``moved`` shares of new content (:class:`~videostyle.model.objective.NewShare`)
        at the whole frame's ``rows, cols`` of ``layer``'s map, ``(1, P)`` in the order of
        :func:`~videostyle.model.tiling.interior_flat`."""
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
