"""The loss terms of one frame's objective: each term one small class, and the registry the objective sums.

Two kinds, by what a term needs:

- feature terms (VGG features of the image): ``content``, ``style``, ``new_content_style``;
- pixel terms (the image alone): ``temporal``, ``tv``, ``range``.

:class:`~videostyle.model.optimise.FrameObjective` sums the feature terms, then the pixel terms, in the
order they are registered here (which fixes the float sums, so keep it: resumed runs are compared byte
for byte). A new term is one class with a ``name`` and ``__call__``, and a builder registered with
:func:`feature_term` or :func:`pixel_term` that returns it (or None when its weight is 0). See
docs/ARCHITECTURE.md, "where does this change go?". The tiled and banded
objectives (:mod:`videostyle.model.regions`) sum the pixel terms the same way; a new *feature* term also
needs its form over a region of VGG's maps there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple, Sequence

import torch

from videostyle.model import losses
from videostyle.model.tiling import layer_stride


@dataclass(frozen=True)
class TermInputs:
    """What a term's builder may use: the loss weights (:class:`~videostyle.model.optimise.LossWeights`),
    the style targets (:class:`~videostyle.model.optimise.StyleTargets`), the content features of the frame
    ``{layer: (1, C, h, w)}`` and their powers, the temporal terms
    (:class:`~videostyle.model.optimise.TemporalTerm`), and ``fresh``: ``(1, 1, H, W)`` in [0, 1], the
    pixels of a warm-started frame that start from the content (None: none, or not warm-started)."""

    weights: object
    targets: object
    content_targets: Mapping[str, torch.Tensor]
    content_powers: Mapping[str, torch.Tensor]
    temporal: Sequence[object]
    fresh: torch.Tensor | None = None


FEATURE_TERMS: dict[str, Callable[[TermInputs], object | None]] = {}
PIXEL_TERMS: dict[str, Callable[[TermInputs], object | None]] = {}


def feature_term(name: str):
    """Register ``builder(TermInputs) -> term | None`` for a term of the VGG features
    (``term(feats) -> weighted scalar``)."""
    def register(builder):
        FEATURE_TERMS[name] = builder
        return builder
    return register


def pixel_term(name: str):
    """Register ``builder(TermInputs) -> term | None`` for a term of the image alone
    (``term(image) -> weighted scalar``)."""
    def register(builder):
        PIXEL_TERMS[name] = builder
        return builder
    return register


class ContentLoss:
    """Gatys' content loss over layers: ``weight * sum_l lw_l * content_loss(F_l, P_l)`` (normalised by the
    target's power, :func:`videostyle.model.losses.content_loss`)."""

    name = "content"

    def __init__(self, weight: float, layers: Mapping[str, float], targets: Mapping[str, torch.Tensor],
                 powers: Mapping[str, torch.Tensor]):
        self.weight, self.layers, self.targets, self.powers = weight, layers, targets, powers

    def __call__(self, feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.weight * sum(lw * losses.content_loss(feats[layer], self.targets[layer], self.powers[layer])
                                 for layer, lw in self.layers.items())


class GramLoss:
    """Gatys' style loss over layers: ``weight * sum_l lw_l * style_loss(F_l, G_l)``, the Gram matrices
    of the features against the (blended) style targets."""

    name = "style"

    def __init__(self, weight: float, layers: Mapping[str, float], grams: Mapping[str, torch.Tensor],
                 powers: Mapping[str, torch.Tensor]):
        self.weight, self.layers, self.grams, self.powers = weight, layers, grams, powers

    def __call__(self, feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.weight * sum(lw * losses.style_loss(feats[layer], self.grams[layer], self.powers[layer])
                                 for layer, lw in self.layers.items())


# New content smaller than this share of the frame gets no style term of its own: a few scattered
# pixels matched to the whole style's Gram matrices alone would speckle.
MIN_NEW_CONTENT_SHARE = 0.002


# The new content's term also counts the pixels around it, fading over this share of the frame's long
# edge (Gaussian sigma; the style's strokes scale with the frame, as the style image is resized to it):
# matched to the style on its own, each frame's strip of entering scenery became a band of strokes of
# its own; with the rim (8 px at 160 px) they continue the strokes beside them (docs/BENCHMARKS.md,
# "New content").
NEW_CONTENT_FEATHER = 0.05


def _feathered(mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """``max(mask, blur(mask) / max(blur(mask)))``: ``mask`` ``(1, 1, H, W)`` with a soft rim of ``sigma`` px
    (a separable Gaussian, zero outside the frame); ``mask`` itself when ``sigma`` is 0."""
    if sigma <= 0:
        return mask
    radius = int(3 * sigma)
    x = torch.arange(-radius, radius + 1, device=mask.device, dtype=mask.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    blurred = torch.nn.functional.conv2d(mask, kernel.view(1, 1, 1, -1), padding=(0, radius))
    blurred = torch.nn.functional.conv2d(blurred, kernel.view(1, 1, -1, 1), padding=(radius, 0))
    return torch.maximum(mask, blurred / blurred.max().clamp_min(1e-6))


class NewShare(NamedTuple):
    """One layer's positions in the new-content term, ``(1, 1, h, w)`` each: ``counted``, each position's
    weight in the Gram matrix (the fresh pixels and their rim); ``moved``, its weight in the gradient
    (the fresh pixels alone, ``<= counted``): the rim's strokes are counted, so the new ones continue
    them, but not repainted, which flickered (the rim is held by the temporal term already)."""

    counted: torch.Tensor
    moved: torch.Tensor


def new_content_shares(weights, fresh: torch.Tensor | None) -> dict[str, NewShare]:
    """Per style layer, each feature position's share of new content (:class:`NewShare`): ``fresh``
    ``(1, 1, H, W)`` (the pixels a warm-started frame starts from the content,
    :func:`videostyle.motion.temporal.warm_start_mask`), with a soft rim (:data:`NEW_CONTENT_FEATHER`) for
    ``counted``, averaged over the layer's cells of :func:`~videostyle.model.tiling.layer_stride` px,
    ``(1, 1, H // s, W // s)``. Empty when the term is off (``weights.new_content`` 0), without fresh
    pixels (a frame from scratch), or when they are under :data:`MIN_NEW_CONTENT_SHARE` of the frame.
    A layer whose grid holds less than one whole new cell is left out."""
    if weights.new_content <= 0 or fresh is None or float(fresh.mean()) < MIN_NEW_CONTENT_SHARE:
        return {}
    rimmed = _feathered(fresh, NEW_CONTENT_FEATHER * max(fresh.shape[-2:]))
    out = {}
    for layer in weights.style_layers:
        s = layer_stride(layer)
        moved, counted = ((torch.nn.functional.avg_pool2d(m, s, s) if s > 1 else m) for m in (fresh, rimmed))
        if float(moved.sum()) >= 1.0:
            out[layer] = NewShare(counted, moved)
    return out


def _box(picked: torch.Tensor) -> tuple[slice, slice]:
    """The rows and columns spanning the True entries of ``picked`` ``(h, w)`` (at least one)."""
    rows = torch.nonzero(picked.any(dim=1)).flatten()
    cols = torch.nonzero(picked.any(dim=0)).flatten()
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


class NewContentStyle:
    """Gatys' style loss on the new content alone: per layer, the Gram matrix of the positions that
    started from the content in a warm-started frame (:func:`new_content_shares`,
    :func:`~videostyle.model.losses.weighted_gram`) against the style's, weighted ``weight * lw_l``.

    Why (issue 18, items 5 and 6): the frame's style term depends on the whole frame's Gram matrices,
    which a warm-started frame already matches, so a strip of new scenery (a few % of the frame) gets
    almost no style gradient from it and stays photo-like for as long as it is in view. Normalised by
    its own positions, this term gives each new pixel the gradient a first frame's pixel gets
    (docs/BENCHMARKS.md, "New content").
    """

    name = "new_content_style"

    def __init__(self, weight: float, layers: Mapping[str, float], grams: Mapping[str, torch.Tensor],
                 powers: Mapping[str, torch.Tensor], shares: Mapping[str, NewShare]):
        self.weight, self.layers, self.grams, self.powers = weight, layers, grams, powers
        # Each layer's positions with new content lie in a box (an entering strip is a few % of the frame):
        # per layer, the box, the shares in it and their sum, fixed for all the frame's iterations.
        self.boxed: dict[str, tuple[tuple[slice, slice], NewShare, float]] = {}
        for layer, share in shares.items():
            box = _box(share.counted[0, 0] > 0)
            counted = share.counted[(..., *box)]
            self.boxed[layer] = (box, NewShare(counted, share.moved[(..., *box)]), float(counted.sum()))

    def __call__(self, feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        total = torch.zeros((), device=next(iter(feats.values())).device)
        for layer, (box, share, summed) in self.boxed.items():
            f = feats[layer][(..., *box)]
            g = losses.weighted_gram(f, share.counted, share.moved, count=float(f.shape[1]) * summed)
            total = total + self.layers[layer] * losses.normalised_mse(g, self.grams[layer].expand_as(g),
                                                                        self.powers[layer])
        return self.weight * total


class TemporalLoss:
    """Ruder's temporal loss: ``sum_k weight_k * temporal_loss(x, warped_k, mask_k)``."""

    name = "temporal"

    def __init__(self, terms: Sequence[object]):
        self.terms = tuple(terms)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return sum(term.weight * losses.temporal_loss(image, term.warped, term.mask) for term in self.terms)


class TotalVariation:
    """``weight * total_variation(x)``: smoothness."""

    name = "tv"

    def __init__(self, weight: float):
        self.weight = weight

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.weight * losses.total_variation(image)


class RangePenalty:
    """``weight * range_penalty(x)``: keeps pixels in [0, 1] while optimising."""

    name = "range"

    def __init__(self, weight: float):
        self.weight = weight

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.weight * losses.range_penalty(image)


# The registry, in summing order.

@feature_term("content")
def _content(i: TermInputs):
    return ContentLoss(i.weights.content, i.weights.content_layers, i.content_targets, i.content_powers)


@feature_term("style")
def _style(i: TermInputs):
    return GramLoss(i.weights.style, i.weights.style_layers, i.targets.grams, i.targets.powers)


@feature_term("new_content_style")
def _new_content_style(i: TermInputs):
    shares = new_content_shares(i.weights, i.fresh)
    return NewContentStyle(i.weights.new_content, i.weights.style_layers, i.targets.grams, i.targets.powers,
                           shares) if shares else None


@pixel_term("temporal")
def _temporal(i: TermInputs):
    return TemporalLoss(i.temporal) if i.temporal else None


@pixel_term("tv")
def _tv(i: TermInputs):
    return TotalVariation(i.weights.tv) if i.weights.tv > 0 else None


@pixel_term("range")
def _range(i: TermInputs):
    return RangePenalty(i.weights.range) if i.weights.range > 0 else None


def build_terms(registry: Mapping[str, Callable], inputs: TermInputs) -> list:
    """The terms of ``registry`` that apply (their builders did not return None), in registry order."""
    return [term for term in (build(inputs) for build in registry.values()) if term is not None]
