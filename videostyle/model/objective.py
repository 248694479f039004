"""The loss terms of one frame's objective: each term one small class, and the registry the objective sums.

Two kinds, by what a term needs:

- feature terms (VGG features of the image): ``content``, ``style``;
- pixel terms (the image alone): ``temporal``, ``tv``, ``range``.

:class:`~videostyle.model.optimise.FrameObjective` sums the feature terms, then the pixel terms, in the
order they are registered here (which fixes the float sums, so keep it: resumed runs are compared byte
for byte). A new term is one class with a ``name`` and ``__call__``, and a builder registered with
:func:`feature_term` or :func:`pixel_term` that returns it (or None when its weight is 0). See
docs/ARCHITECTURE.md, "where does this change go?". The tiled objective
(:mod:`videostyle.model.tiled`) sums the pixel terms the same way; a new *feature* term also needs its
tiled form there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from videostyle.model import losses


@dataclass(frozen=True)
class TermInputs:
    """What a term's builder may use: the loss weights (:class:`~videostyle.model.optimise.LossWeights`),
    the style targets (:class:`~videostyle.model.optimise.StyleTargets`), the content features of the frame
    ``{layer: (1, C, h, w)}`` and their powers, and the temporal terms
    (:class:`~videostyle.model.optimise.TemporalTerm`)."""

    weights: object
    targets: object
    content_targets: Mapping[str, torch.Tensor]
    content_powers: Mapping[str, torch.Tensor]
    temporal: Sequence[object]


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
