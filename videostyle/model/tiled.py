"""The frame objective's value and gradient evaluated tile by tile, exactly, in bounded memory.

VGG runs on crops: each tile's interior plus a halo. Exact (issue 17) because, besides what
:mod:`videostyle.model.regions` says of the terms, a tile's interior features equal the whole frame's
(:mod:`videostyle.model.tiling`): summing each crop's pixel gradient, from its interior features only,
gives the whole frame's gradient.

The optimiser still sees the whole image: only the VGG evaluation is tiled. On the CPU the memory plan
prefers bands (:mod:`videostyle.model.banded`), which hold less and overlap less; tiles are what a GPU
plans (measured there) and what ``--tile`` forces.
"""

from __future__ import annotations

import torch

from videostyle.model.features import VGGEncoder
from videostyle.model.regions import RegionObjective
from videostyle.model.tiling import Tile, assemble_features, layer_stride, plan_tiles


class TiledObjective(RegionObjective):
    """The value and gradient of :class:`~videostyle.model.optimise.FrameObjective`'s objective, VGG
    evaluated on tiles (see the module docstring); same constructor arguments plus ``tile`` and ``halo``
    px (:func:`~videostyle.model.tiling.plan_tiles`).

    :meth:`loss_and_gradient` sets ``image.grad``. The peak memory is one crop's VGG activations instead
    of the frame's; the cost is one more forward pass per iteration over all crops but the last (the
    Gram pass), and the halos' overlap.
    """

    def __init__(self, encoder: VGGEncoder, content: torch.Tensor, targets, weights, temporal=(), fresh=None, *,
                 tile: int, halo: int):
        self.tiles = plan_tiles(content.shape[-2], content.shape[-1], tile=tile, halo=halo)
        content_targets = assemble_features(encoder, content, list(weights.content_layers), self.tiles)
        super().__init__(encoder, content_targets, targets, weights, content.shape, temporal, fresh)

    def _content(self, feats: dict[str, torch.Tensor], t: Tile) -> torch.Tensor:
        """Tile ``t``'s share of the weighted content terms, from the crop's features ``feats``."""
        total = torch.zeros((), device=next(iter(feats.values())).device)
        for layer in self.weights.content_layers:
            s = layer_stride(layer)
            total = total + self.content_term(layer, feats[layer][(..., *t.interior(s))], *t.full(s))
        return total

    def _evaluate(self, image: torch.Tensor, *, gradient: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        variable, image = image, image.detach()
        grad, pixel = self.pixel_terms(image, gradient=gradient)
        # Pass 1: the global Gram matrices, summed over the tiles' interiors. The last crop runs with
        # its graph kept, and is back-propagated first in pass 2: one forward pass fewer per iteration.
        kept: tuple[Tile, torch.Tensor, dict[str, torch.Tensor]] | None = None
        sums: dict[str, torch.Tensor] = {}
        new_sums: dict[str, torch.Tensor] = {}
        content_total = torch.zeros((), device=image.device)
        for i, t in enumerate(self.tiles):
            if gradient and i == len(self.tiles) - 1:
                leaf, feats = self._graph(t.crop(image))
                kept = (t, leaf, feats)
            else:
                with torch.no_grad():
                    feats = self.encoder(t.crop(image))
            for layer in self.weights.style_layers:
                s = layer_stride(layer)
                self.add_grams(sums, new_sums, layer, feats[layer][(..., *t.interior(s))], *t.full(s))
            if not gradient:
                with torch.no_grad():
                    content_total = content_total + self._content(feats, t)
            del feats
        gram_parts, style_matrices, new_matrices = self.gram_terms(sums, new_sums)
        parts = {"content": content_total, **gram_parts}
        if gradient:
            # Pass 2: each crop back-propagated alone through the surrogate, its gradient summed.
            for t in [kept[0], *self.tiles[:-1]]:
                if kept is not None:  # dropped here, so its features go with this crop's backward pass
                    _, leaf, feats = kept
                    kept = None
                else:
                    leaf, feats = self._graph(t.crop(image))
                with torch.enable_grad():
                    surrogate = content = leaf.new_zeros(())
                    for layer, f in feats.items():
                        s = layer_stride(layer)
                        terms = self.region_terms(layer, f[(..., *t.interior(s))], *t.full(s),
                                                  style_matrices, new_matrices)
                        surrogate, content = surrogate + terms[0], content + terms[1]
                    content_total = content_total + content.detach()
                    (surrogate + content).backward()
                del feats
                t.crop(grad).add_(leaf.grad)
                del leaf
            parts["content"] = content_total
            variable.grad = grad
        parts.update(pixel)
        return sum(parts.values()), parts

    def _graph(self, crop: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(leaf, features)``: a copy of the crop and its read features with their graph back to it."""
        leaf = crop.clone().requires_grad_(True)
        with torch.enable_grad():
            return leaf, self.encoder(leaf)
