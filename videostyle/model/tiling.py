"""Tiles and bands on VGG's pooling grid, and the no-grad feature passes that run over tiles in bounded
memory.

A feature at layer ``relu{b}_{n}`` (or ``pool{b}``) of a crop equals the whole image's when the crop
reaches at least VGG's receptive-field radius beyond it (or the image's own border, where the zero
padding is the same) and the crop starts on the pooling grid. So features, and the Gram matrices that
sum over them, can be computed crop by crop from each crop's interior (issue 17).

Convention:
    Images are ``(1, 3, H, W)`` float32; tiles are given in px of the image. A layer ``relu{b}_{n}`` or
    ``pool{b}`` sits ``2^(b-1)`` (``2^b`` for the pooling) px apart on the image; tile boundaries and
    crop starts are multiples of :data:`ALIGN` px, so every pooling window of a crop is one of the
    image's and every layer's feature rows split at the same places. Bands (:func:`plan_bands`) are rows
    of one VGG block's input map, which start on an even row for the same reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

# Tile boundaries and crop starts are multiples of this: 4 poolings before relu5_1 (2^4 px).
ALIGN = 16

# The halo of a tile, px: VGG's receptive-field radius at relu5_1 is 85 px, so 96 (on the pooling grid)
# makes tiled features exact to float rounding (tests/test_tiled.py). Smaller halos, measured in
# docs/BENCHMARKS.md ("Tiled optimisation"), cost gradient error for less overlap.
TILE_HALO = 96

# Images longer than this (px) have their no-grad feature passes (the style image's Gram matrices) run
# on tiles of this size. A fixed rule, not the memory budget: the style targets must not depend on the
# memory free at the time, or a resumed run would differ from an uninterrupted one by float rounding.
# A crop of 512 + 2 x 96 px holds 127 MB per 64-channel map; measured with a 1920 px style image, the
# process's peak in this pass went from 2.4 GB (whole) to 1.35 GB.
FEATURE_PASS_TILE = 512

# A band of the banded objective (videostyle.model.banded) spans as many rows of a block's input as keep
# each of the block's maps over the band, its context included (the convolutions' output channels x its
# rows x the map's width, float32), within this many bytes: at 1080 px wide, 52 rows of the first block's
# own and 4 of context. Under glibc's mmap threshold as --max-memory sets it (memory.MMAP_THRESHOLD), so
# the bands' maps are reused from the heap instead of mapped afresh for each band (measured, 32 MiB maps
# took 14% longer under that threshold than under glibc's own). Each band recomputes its context, but
# the size matters little: 12, 16, 32 and 64 MiB maps took 46.0, 44.7, 42.9 and 45.8 s on a 1080x1920
# frame (docs/BENCHMARKS.md, "Bands").
BAND_BYTES = 15 << 20

Encoder = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class Band:
    """Rows ``[lo, hi)`` of a block's input map and the rows ``[a, b)`` it runs on: ``lo`` and ``a`` even,
    so its pooling windows are the whole map's, with at least one row of context per 3x3 convolution
    each side (or the map's own border, where the zero padding is the same)."""

    lo: int
    hi: int
    a: int
    b: int


def vgg_blocks(stack: Sequence[str]) -> list[list[str]]:
    """The stack's layer names cut after each pooling: VGG's blocks (the last may end without one)."""
    blocks: list[list[str]] = [[]]
    for name in stack:
        blocks[-1].append(name)
        if name.startswith("pool"):
            blocks.append([])
    return [block for block in blocks if block]


def band_rows(channels: int, width: int, convs: int, band_bytes: int = BAND_BYTES) -> int:
    """A band's own rows (even, at least 8) for a block of ``convs`` 3x3 convolutions with ``channels``
    outputs on a map ``width`` wide: with :func:`plan_bands`' context, each map is within ``band_bytes``."""
    return max(8, (band_bytes // (channels * width * 4) - band_context(convs)) // 2 * 2)


def band_context(convs: int) -> int:
    """Rows of context a band of a block of ``convs`` 3x3 convolutions runs on beyond its own: ``convs``
    below, and above ``convs`` rounded up to even (so the band starts on the pooling grid)."""
    return 2 * convs + convs % 2


def plan_bands(height: int, rows: int, convs: int) -> list[Band]:
    """Bands of ``rows`` rows covering ``height`` rows of a block's input with ``convs`` 3x3 convolutions
    (the first starts at 0: ``rows`` even keeps every ``lo`` even)."""
    above = band_context(convs) - convs
    return [Band(lo, min(height, lo + rows), max(0, lo - above), min(height, lo + rows + convs))
            for lo in range(0, height, rows)]


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
        """The interior's rows and columns in the whole image's feature map at ``stride``."""
        return slice(self.y0 // stride, self.y1 // stride), slice(self.x0 // stride, self.x1 // stride)

    def crop(self, image: torch.Tensor) -> torch.Tensor:
        """The crop of ``image`` ``(..., H, W)`` (a view)."""
        return image[..., self.cy0:self.cy1, self.cx0:self.cx1]


def _splits(length: int, parts: int) -> list[int]:
    """``parts + 1`` boundaries from 0 to ``length``, as even as :data:`ALIGN` allows, inner ones on it."""
    inner = [round(length * k / parts / ALIGN) * ALIGN for k in range(1, parts)]
    return [0, *inner, length]


def tile_grid(height: int, width: int, tile: int) -> tuple[int, int]:
    """``(rows, columns)`` of tiles of at most ``tile`` px a side (rounded down to :data:`ALIGN`)."""
    tile = max(ALIGN, tile // ALIGN * ALIGN)
    return math.ceil(height / tile), math.ceil(width / tile)


def plan_tiles(height: int, width: int, *, tile: int, halo: int) -> list[Tile]:
    """Tiles covering ``height x width`` px in a grid of :func:`tile_grid`'s rows and columns, of even
    sizes (the largest crop sets the memory; fewer boundaries less overlap), each crop reaching ``halo``
    px beyond its interior (clipped to the image).

    Inner boundaries and crop starts are multiples of :data:`ALIGN`, so interiors partition the image
    and, at every layer, their feature rows and columns partition the image's (``y // stride``).
    """
    rows, cols = tile_grid(height, width, tile)
    halo_start = -(-halo // ALIGN) * ALIGN  # a crop's start moves back to the pooling grid
    ys, xs = _splits(height, rows), _splits(width, cols)
    return [Tile(y0, y1, x0, x1, max(0, y0 - halo_start), min(height, y1 + halo),
                 max(0, x0 - halo_start), min(width, x1 + halo))
            for y0, y1 in zip(ys, ys[1:]) for x0, x1 in zip(xs, xs[1:])]


def largest_crop(height: int, width: int, *, tile: int, halo: int) -> tuple[int, int]:
    """``(h, w)`` px of the largest crop :func:`plan_tiles` makes (what one VGG pass holds)."""
    tiles = plan_tiles(height, width, tile=tile, halo=halo)
    return max(t.cy1 - t.cy0 for t in tiles), max(t.cx1 - t.cx0 for t in tiles)


def interior_flat(features: torch.Tensor, tile: Tile, stride: int) -> torch.Tensor:
    """``(C, P)``: the features of ``tile``'s interior, from a crop's features ``(1, C, h, w)`` at
    ``stride``, one column per position."""
    f = features[(..., *tile.interior(stride))]
    return f.reshape(f.shape[1], -1)


def interior_gram(features: torch.Tensor, tile: Tile, stride: int) -> torch.Tensor:
    """``F F^T`` ``(C, C)`` over the interior of ``tile`` in a crop's features ``(1, C, h, w)`` at
    ``stride``: the tile's share of the image's Gram matrix, not yet divided by :func:`gram_count`."""
    flat = interior_flat(features, tile, stride)
    return flat @ flat.T


def gram_count(layer: str, channels: int, height: int, width: int) -> float:
    """``C * h * w``: what :func:`videostyle.model.losses.gram` divides by, for ``layer`` of an image of
    ``height x width`` px."""
    s = layer_stride(layer)
    return float(channels * (height // s) * (width // s))


def gram_sums(encoder: Encoder, image: torch.Tensor, layers: Sequence[str],
              tiles: Sequence[Tile]) -> dict[str, torch.Tensor]:
    """``{layer: (C, C)}``: ``F F^T`` of the whole image at each layer, summed over ``tiles`` (no grad)."""
    sums: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for t in tiles:
            feats = encoder(t.crop(image))
            for layer in layers:
                g = interior_gram(feats[layer], t, layer_stride(layer))
                sums[layer] = sums[layer] + g if layer in sums else g
    return sums


def assemble_features(encoder: Encoder, image: torch.Tensor, layers: Sequence[str],
                      tiles: Sequence[Tile]) -> dict[str, torch.Tensor]:
    """``{layer: (1, C, H // s, W // s)}``: the whole image's features, put together from the tiles'
    interiors (no grad)."""
    height, width = image.shape[-2:]
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for t in tiles:
            feats = encoder(t.crop(image))
            for layer in layers:
                s = layer_stride(layer)
                if layer not in out:
                    out[layer] = feats[layer].new_zeros((1, feats[layer].shape[1], height // s, width // s))
                rows, cols = t.full(s)
                out[layer][..., rows, cols] = feats[layer][(..., *t.interior(s))]
    return out


def tiled_grams(encoder: Encoder, image: torch.Tensor, layers: Sequence[str], *,
                tile: int = FEATURE_PASS_TILE, halo: int = TILE_HALO) -> dict[str, torch.Tensor]:
    """``{layer: (1, C, C)}``: the Gram matrices of ``image`` ``(1, 3, H, W)``
    (:func:`videostyle.model.losses.gram`'s normalisation, ``/ (C * h * w)``), from tiles of ``tile``
    px (no grad)."""
    height, width = image.shape[-2:]
    sums = gram_sums(encoder, image, layers, plan_tiles(height, width, tile=tile, halo=halo))
    return {layer: (sums[layer] / gram_count(layer, sums[layer].shape[0], height, width))[None] for layer in layers}
