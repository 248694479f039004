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
    - A tile's interior features equal the whole frame's when the tile's crop reaches at least the
      receptive-field radius of the deepest layer used beyond the interior (or the frame's own border,
      where the zero padding is the same), and when the crop starts on the pooling grid. Summing each
      crop's pixel gradient, from its interior features only, gives the whole frame's gradient.

Convention:
    Images are ``(1, 3, H, W)`` float32; tiles are given in px of the image. A layer ``relu{b}_{n}`` or
    ``pool{b}`` sits ``2^(b-1)`` (``2^b`` for the pooling) px apart on the image; crops start on
    multiples of :data:`ALIGN` px so every pooling window of the crop is one of the frame's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from videostyle.model import losses
from videostyle.model.features import VGGEncoder
from videostyle.model.optimise import pixel_terms

# Crops start on multiples of this (4 poolings before relu5_1: 2^4 px), so the crop's pooling windows
# are the whole frame's.
ALIGN = 16

# The halo of a tile, px: VGG's receptive-field radius at relu5_1 is 85 px, so 96 (on the pooling grid)
# makes the tiled gradient exact to float rounding (tests/test_tiled.py). Smaller halos, measured
# in docs/BENCHMARKS.md ("Tiled optimisation"), cost gradient error for less overlap.
TILE_HALO = 96


def layer_stride(layer: str) -> int:
    """Pixels between neighbouring features of ``relu{b}_{n}``/``conv{b}_{n}`` (``2^(b-1)``) or
    ``pool{b}`` (``2^b``)."""
    block = int(layer[4])
    return 2 ** block if layer.startswith("pool") else 2 ** (block - 1)


def receptive_radius(stack: Sequence[str]) -> int:
    """How far (px) the input can lie from a feature of the stack's last layer and still change it.

    A 3x3 convolution adds one feature step, a 2x2 pooling of stride 2 adds one step before it doubles.
    VGG to relu5_1: 85 px; to relu4_2: 45 px.
    """
    radius, step = 0, 1
    for name in stack:
        if name.startswith("conv"):
            radius += step
        elif name.startswith("pool"):
            radius += step
            step *= 2
    return radius


@dataclass(frozen=True)
class Tile:
    """One tile: its interior ``[y0, y1) x [x0, x1)`` and its crop (interior plus halo), px."""

    y0: int
    y1: int
    x0: int
    x1: int
    cy0: int
    cy1: int
    cx0: int
    cx1: int

    def interior(self, stride: int) -> tuple[slice, slice]:
        """The interior's rows and columns in the crop's feature map at ``stride`` px per feature."""
        return (slice((self.y0 - self.cy0) // stride, (self.y1 - self.cy0) // stride),
                slice((self.x0 - self.cx0) // stride, (self.x1 - self.cx0) // stride))

    def full(self, stride: int) -> tuple[slice, slice]:
        """The interior's rows and columns in the whole frame's feature map at ``stride``."""
        return slice(self.y0 // stride, self.y1 // stride), slice(self.x0 // stride, self.x1 // stride)


def plan_tiles(height: int, width: int, *, tile: int, halo: int) -> list[Tile]:
    """Tiles of at most ``tile`` x ``tile`` interior px covering ``height x width``, each crop reaching
    ``halo`` px beyond its interior (clipped to the frame).

    ``tile`` and the crop starts are rounded to :data:`ALIGN`; interiors partition the frame, and at
    every layer their feature rows and columns partition the frame's (``y // stride`` boundaries).
    """
    tile = max(ALIGN, tile // ALIGN * ALIGN)
    halo_start = -(-halo // ALIGN) * ALIGN  # a crop's start moves back to the pooling grid
    tiles = []
    for y0 in range(0, height, tile):
        y1 = min(height, y0 + tile)
        for x0 in range(0, width, tile):
            x1 = min(width, x0 + tile)
            tiles.append(Tile(y0, y1, x0, x1, max(0, y0 - halo_start), min(height, y1 + halo),
                              max(0, x0 - halo_start), min(width, x1 + halo)))
    return tiles


class TiledObjective:
    """The value and gradient of :class:`~videostyle.model.optimise.FrameObjective`'s objective, VGG evaluated
    on tiles (see the module docstring); same constructor arguments plus ``tile`` and ``halo`` px.

    :meth:`loss_and_gradient` sets ``image.grad``. The peak memory is one crop's VGG activations instead
    of the frame's; the cost is one more forward pass per iteration (the Gram pass) and the halos'
    overlap.
    """

    def __init__(self, encoder: VGGEncoder, content: torch.Tensor, targets, weights, temporal=(), *,
                 tile: int, halo: int):
        self.encoder, self.targets, self.weights = encoder, targets, weights
        self.temporal = tuple(temporal)
        self.tiles = plan_tiles(content.shape[-2], content.shape[-1], tile=tile, halo=halo)
        self.shape = content.shape
        with torch.no_grad():
            self.content_targets = self._assemble(content, list(weights.content_layers))
            self.content_powers = {layer: losses.power(t) for layer, t in self.content_targets.items()}

    def _assemble(self, image: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
        """The whole frame's features at ``layers``, put together from the tiles' interiors (no grad)."""
        out: dict[str, torch.Tensor] = {}
        for t in self.tiles:
            feats = self.encoder(image[..., t.cy0:t.cy1, t.cx0:t.cx1])
            for layer in layers:
                s = layer_stride(layer)
                if layer not in out:
                    c = feats[layer].shape[1]
                    out[layer] = feats[layer].new_zeros((1, c, self.shape[-2] // s, self.shape[-1] // s))
                rows, cols = t.full(s)
                out[layer][..., rows, cols] = feats[layer][(..., *t.interior(s))]
        return out

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
        w = self.weights
        style_layers = list(w.style_layers)
        h, wd = self.shape[-2], self.shape[-1]
        # Pass 1 (no grad): the global Gram matrices, summed over the tiles' interiors (and, when no
        # gradient is asked for, the content terms).
        sums: dict[str, torch.Tensor] = {}
        content_total = torch.zeros((), device=image.device)
        with torch.no_grad():
            for t in self.tiles:
                feats = self.encoder(image.detach()[..., t.cy0:t.cy1, t.cx0:t.cx1])
                for layer in style_layers:
                    f = feats[layer][(..., *t.interior(layer_stride(layer)))]
                    flat = f.reshape(f.shape[1], -1)
                    g = flat @ flat.T
                    sums[layer] = sums[layer] + g if layer in sums else g
                if not gradient:
                    content_total = content_total + self._content(feats, t)
        # The style loss from the Gram matrices, and dL/dG (constant for pass 2).
        style_total = torch.zeros((), device=image.device)
        d_gram: dict[str, torch.Tensor] = {}
        norms: dict[str, float] = {}
        for layer, lw in w.style_layers.items():
            s = layer_stride(layer)
            c = sums[layer].shape[0]
            norms[layer] = float(c * (h // s) * (wd // s))
            gram = (sums[layer] / norms[layer])[None].requires_grad_(True)
            with torch.enable_grad():
                term = w.style * lw * losses.normalised_mse(gram, self.targets.grams[layer],
                                                            self.targets.powers[layer])
                (d_gram[layer],) = torch.autograd.grad(term, gram)
            style_total = style_total + term.detach()
        if not gradient:
            parts = {"content": content_total, "style": style_total}
            with torch.no_grad():
                parts.update(pixel_terms(image, self.temporal, w))
            return sum(parts.values()), parts
        # Pass 2: each crop back-propagated alone through the surrogate, its gradient summed.
        grad = torch.zeros_like(image)
        for t in self.tiles:
            crop = image.detach()[..., t.cy0:t.cy1, t.cx0:t.cx1].clone().requires_grad_(True)
            with torch.enable_grad():
                feats = self.encoder(crop)
                surrogate = crop.new_zeros(())
                for layer in style_layers:
                    f = feats[layer][(..., *t.interior(layer_stride(layer)))]
                    flat = f.reshape(f.shape[1], -1)
                    # sum(F * (A F)) with A F held constant has the gradient A F = (dG + dG^T) F / n, the
                    # true one, for one (C, C) x (C, P) product and no product in the backward pass.
                    a = (d_gram[layer][0] + d_gram[layer][0].T) / norms[layer]
                    surrogate = surrogate + (flat * (a @ flat.detach())).sum()
                content = self._content(feats, t)
                content_total = content_total + content.detach()
                (surrogate + content).backward()
            grad[..., t.cy0:t.cy1, t.cx0:t.cx1] += crop.grad
        # The pixel-space terms on the whole image.
        x = image.detach().requires_grad_(True)
        parts = {"content": content_total, "style": style_total}
        with torch.enable_grad():
            pixel = pixel_terms(x, self.temporal, w)
            if pixel:
                sum(pixel.values()).backward()
                grad += x.grad
        parts.update({name: value.detach() for name, value in pixel.items()})
        image.grad = grad
        return sum(parts.values()), parts

