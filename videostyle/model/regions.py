"""The frame objective's terms over regions of VGG's feature maps, for objectives that never hold the
whole frame's VGG graph (:mod:`videostyle.model.tiled`: tiles; :mod:`videostyle.model.banded`: bands).

Why region by region can be exact (issue 17):
    - The style terms depend on the whole frame only through each layer's Gram matrix, a sum over
      positions: a no-grad pass over the regions accumulates the global Gram matrices, and with them the
      loss and the constant ``dL/dG``.
    - Given ``dL/dG``, the gradient at the features of any position needs only that position's features:
      ``dL/dF = (dL/dG + dL/dG^T) F / n``. So each region is back-propagated alone through a surrogate
      whose gradient is that: ``sum(F_r * A F_r)`` with ``A = (dL/dG + dL/dG^T) / n`` and ``A F_r`` held
      constant.
    - The content terms are sums over positions (local), and the temporal, tv and range terms live in
      pixel space (no VGG): they are evaluated on the whole image.

Convention: a region is given by the rows and columns it covers in the whole frame's map of a layer
(``relu{b}_{n}`` is ``H // s x W // s`` with ``s`` = :func:`~videostyle.model.tiling.layer_stride`), and
its features ``part`` ``(1, C, r, c)``.
"""

from __future__ import annotations

import torch

from videostyle.model import losses
from videostyle.model.objective import new_content_shares
from videostyle.model.optimise import pixel_terms
from videostyle.model.tiling import gram_count


class RegionObjective:
    """The value and gradient of :class:`~videostyle.model.optimise.FrameObjective`'s objective, from
    regions of VGG's maps: subclasses run VGG and call :meth:`add_grams`, :meth:`gram_terms`,
    :meth:`region_terms` and :meth:`content_term` for each region.

    ``content_targets``: ``{layer: (1, C, H // s, W // s)}``, the content's features at the content layers;
    ``shape``: the frame's ``(1, 3, H, W)``; the rest as :class:`~videostyle.model.optimise.FrameObjective`'s.
    """

    def __init__(self, encoder, content_targets: dict[str, torch.Tensor], targets, weights, shape,
                 temporal=(), fresh=None):
        self.encoder, self.targets, self.weights = encoder, targets, weights
        self.shape = shape
        self.temporal = tuple(temporal)
        self.content_targets = content_targets
        with torch.no_grad():
            self.content_powers = {layer: losses.power(t) for layer, t in content_targets.items()}
        # The new content's style term (objective.NewContentStyle): its positions' shares per layer.
        self.new_shares = new_content_shares(weights, fresh)
        self.new_totals = {layer: float(share.counted.sum()) for layer, share in self.new_shares.items()}

    def loss(self, image: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(total, parts)`` of ``image`` (no gradient)."""
        return self._evaluate(image, gradient=False)

    def loss_and_gradient(self, image: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(total, parts)`` as :meth:`FrameObjective.__call__` gives them (0-d, detached, weighted),
        with ``image.grad`` set to the gradient of ``total``."""
        return self._evaluate(image, gradient=True)

    def _evaluate(self, image: torch.Tensor, *, gradient: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def pixel_terms(self, image: torch.Tensor, *, gradient: bool
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(grad, parts)``: the pixel-space terms of ``image`` (detached) on the whole image, and their
        gradient ``(1, 3, H, W)`` (zeros without ``gradient``). Run first: their whole-frame temporaries
        (about ten ``3 x H x W`` tensors with their backward) are freed before any of VGG's exist."""
        grad = torch.zeros_like(image)
        with torch.set_grad_enabled(gradient):
            x = image.clone().requires_grad_(True) if gradient else image
            pixel = pixel_terms(x, self.temporal, self.weights)
            if pixel and gradient:
                sum(pixel.values()).backward()
                grad += x.grad
        return grad, {name: value.detach() for name, value in pixel.items()}

    def add_grams(self, sums: dict[str, torch.Tensor], new_sums: dict[str, torch.Tensor], layer: str,
                  part: torch.Tensor, rows: slice, cols: slice) -> None:
        """Adds the region's ``F F^T`` ``(C, C)`` to ``sums[layer]`` (a style layer), and its share-weighted
        one to ``new_sums[layer]`` (a new-content layer); no grad."""
        with torch.no_grad():
            flat = part.reshape(part.shape[1], -1)
            if layer in self.weights.style_layers:
                g = flat @ flat.T
                sums[layer] = sums[layer] + g if layer in sums else g
            if layer in self.new_shares:
                g = (flat * self.share(layer, rows, cols, "counted")) @ flat.T
                new_sums[layer] = new_sums[layer] + g if layer in new_sums else g

    def content_term(self, layer: str, part: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
        """``layer``'s weighted content term over the features ``part`` at the whole frame's ``rows, cols``
        of that layer's map (0 when it is not a content layer)."""
        w = self.weights
        if layer not in w.content_layers:
            return part.new_zeros(())
        target = self.content_targets[layer]
        sq = (part - target[..., rows, cols]).pow(2).sum()
        return w.content * w.content_layers[layer] * sq / (target.numel() * (self.content_powers[layer] + losses.EPS))

    def region_terms(self, layer: str, part: torch.Tensor, rows: slice, cols: slice,
                     style_matrices: dict[str, torch.Tensor], new_matrices: dict[str, torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The backward pass's ``(surrogate, content)`` terms of ``layer`` over the features ``part`` at the
        whole frame's ``rows, cols`` of that layer's map, given :meth:`gram_terms`' matrices."""
        flat = part.reshape(part.shape[1], -1)
        surrogate = part.new_zeros(())
        if layer in style_matrices:
            # sum(F * (A F)) with A F held constant has the gradient A F = (dG + dG^T) F / n, the true
            # one, for one (C, C) x (C, P) product and none in the backward pass.
            surrogate = surrogate + (flat * (style_matrices[layer] @ flat.detach())).sum()
        if layer in new_matrices:  # the same, each position weighted by its moved share
            surrogate = surrogate + (flat * (new_matrices[layer] @ flat.detach())
                                     * self.share(layer, rows, cols, "moved")).sum()
        return surrogate, self.content_term(layer, part, rows, cols)

    def share(self, layer: str, rows: slice, cols: slice, which: str) -> torch.Tensor:
        """The ``counted`` or ``moved`` shares of new content (:class:`~videostyle.model.objective.NewShare`)
        at the whole frame's ``rows, cols`` of ``layer``'s map, ``(1, P)`` in the order of a region's
        ``part.reshape(C, -1)``."""
        return getattr(self.new_shares[layer], which)[0, 0, rows, cols].reshape(1, -1)

    def gram_terms(self, sums: dict[str, torch.Tensor], new_sums: dict[str, torch.Tensor]
                   ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(parts, style_matrices, new_matrices)`` from the frame's Gram sums: the weighted ``style`` (and
        ``new_content_style``) loss, and per layer the surrogate's ``A`` ``(C, C)``, constant for the
        backward pass."""
        h, w = self.shape[-2], self.shape[-1]
        parts: dict[str, torch.Tensor] = {}
        parts["style"], style_matrices = self._weighted_grams(
            sums, self.weights.style, lambda layer, c: gram_count(layer, c, h, w))
        new_matrices: dict[str, torch.Tensor] = {}
        if self.new_shares:
            # n is C x the positions' total share (objective.NewContentStyle).
            parts["new_content_style"], new_matrices = self._weighted_grams(
                new_sums, self.weights.new_content, lambda layer, c: c * self.new_totals[layer])
        return parts, style_matrices, new_matrices

    def _weighted_grams(self, sums: dict[str, torch.Tensor], weight: float, count
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
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
