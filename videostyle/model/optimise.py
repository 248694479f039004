"""Per-frame optimisation (Gatys et al. 2016, with Ruder et al.'s temporal terms).

Convention:
    Images are ``(1, 3, H, W)`` float32 RGB in [0, 1] on the encoder's device. The optimised variable
    is the image itself (pixel space); it is clamped to [0, 1] only in the returned result.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

import torch

from videostyle.model import losses
from videostyle.model.features import VGGEncoder
from videostyle.model.lbfgs import LBFGS
from videostyle.model.objective import FEATURE_TERMS, PIXEL_TERMS, TermInputs, build_terms
from videostyle.model.tiling import FEATURE_PASS_TILE, tiled_grams

# --tol compares the loss with the loss this many iterations earlier. Comparing consecutive iterations
# (artistic-videos' interval of 1) stopped every frame after 2 iterations: L-BFGS's first step is scaled
# to 1/|gradient|_1, so it barely changes the loss (measured: 61.546 -> 61.535 at 256 px).
TOL_WINDOW = 10

# L-BFGS correction pairs kept by default (--lbfgs-history; torch's default is 100): each pair is two
# 3 x H x W float32 vectors, 10 GB for 50 pairs at 3840x2160 (videostyle.model.memory).
LBFGS_HISTORY = 50


@dataclass(frozen=True)
class StyleTargets:
    """Blended Gram matrices of the style image(s): ``{layer: (1, C, C)}``, computed once per run, and
    their :func:`~videostyle.model.losses.power` (the style losses' normalisers)."""

    grams: dict[str, torch.Tensor]

    @functools.cached_property
    def powers(self) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {layer: losses.power(g) for layer, g in self.grams.items()}


def compute_style_targets(encoder: VGGEncoder, style_images: Sequence[torch.Tensor],
                          blend_weights: Sequence[float], layers: Sequence[str]) -> StyleTargets:
    """Weighted sum of each style image's Gram matrices (neural-style's ``-style_blend_weights``).

    Args:
        style_images: each ``(1, 3, H_i, W_i)`` in [0, 1]; sizes may differ.
        blend_weights: one weight per image, summing to 1.

    An image longer than :data:`~videostyle.model.tiling.FEATURE_PASS_TILE` px is evaluated on tiles
    (the same Gram matrices to float rounding): whole, a 1920 px style image raised the process's
    peak to 2.4 GB, tiled to 1.35 GB (docs/BENCHMARKS.md, "Tiled optimisation").
    """
    grams: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for image, weight in zip(style_images, blend_weights):
            if max(image.shape[-2:]) > FEATURE_PASS_TILE:
                image_grams = tiled_grams(encoder, image, layers)
            else:
                feats = encoder(image)
                image_grams = {layer: losses.gram(feats[layer]) for layer in layers}
            for layer in layers:
                g = image_grams[layer] * weight
                grams[layer] = grams[layer] + g if layer in grams else g
    return StyleTargets(grams)


@dataclass(frozen=True)
class TemporalTerm:
    """One temporal consistency term: stay close to ``warped`` where ``mask`` is 1.

    Attributes:
        warped: ``(1, 3, H, W)`` in [0, 1], an earlier output warped to this frame.
        mask: ``(1, 1, H, W)`` in [0, 1], reliability of that warp per pixel.
        weight: multiplies :func:`videostyle.model.losses.temporal_loss`.
    """

    warped: torch.Tensor
    mask: torch.Tensor
    weight: float


class FrameStart(NamedTuple):
    """How one frame's optimisation begins: ``init`` ``(1, 3, H, W)``, its temporal terms, and ``fresh``
    ``(1, 1, H, W)`` in [0, 1], the pixels of a warm start taken from the content rather than the previous
    output (scenery entering the frame, what a moving thing uncovers), None where there are none."""

    init: torch.Tensor
    temporal: tuple[TemporalTerm, ...] = ()
    fresh: torch.Tensor | None = None


@dataclass(frozen=True)
class LossWeights:
    """Loss weights and per-layer weights (layer weights already normalised to sum 1)."""

    content: float
    style: float
    tv: float
    content_layers: dict[str, float]
    style_layers: dict[str, float]
    range: float = 0.0  # keeps pixels in [0, 1] while optimising (losses.range_penalty)
    new_content: float = 0.0  # the style term on new content alone (objective.NewContentStyle)


class FrameObjective:
    """The scalar objective of one frame: the sum of the registered loss terms
    (:mod:`videostyle.model.objective`): content + style + temporal + tv + range.

    Content targets are computed once at construction from ``content`` ``(1, 3, H, W)``. ``fresh``
    ``(1, 1, H, W)``: the pixels of a warm-started frame that start from the content (the new-content
    style term's, :class:`~videostyle.model.objective.NewContentStyle`), None for none.
    """

    def __init__(self, encoder: VGGEncoder, content: torch.Tensor, targets: StyleTargets,
                 weights: LossWeights, temporal: Sequence[TemporalTerm] = (), fresh: torch.Tensor | None = None):
        self.encoder = encoder
        self.targets = targets
        self.weights = weights
        self.temporal = tuple(temporal)
        with torch.no_grad():
            feats = encoder(content)
            self.content_targets = {layer: feats[layer] for layer in weights.content_layers}
            # The content loss normalisers once per frame (the style ones once per run, in targets).
            self.content_powers = {layer: losses.power(t) for layer, t in self.content_targets.items()}
        self.feature_terms = build_terms(FEATURE_TERMS, TermInputs(weights, targets, self.content_targets,
                                                                    self.content_powers, self.temporal, fresh))

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns ``(total, parts)``; parts are the weighted terms (scalars, still in the graph)."""
        feats = self.encoder(image)
        parts = {term.name: term(feats) for term in self.feature_terms}
        parts.update(pixel_terms(image, self.temporal, self.weights))
        return sum(parts.values()), parts

    def loss(self, image: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(total, parts)`` of ``image`` without a graph."""
        with torch.no_grad():
            return self(image)

    def loss_and_gradient(self, image: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(total, parts)`` detached, with the gradient of ``total`` accumulated into ``image.grad``
        (the interface :func:`stylize_frame` calls; :class:`videostyle.model.regions.RegionObjective` has it too)."""
        total, parts = self(image)
        total.backward()
        return total.detach(), {name: value.detach() for name, value in parts.items()}


def pixel_terms(image: torch.Tensor, temporal: Sequence[TemporalTerm], weights: LossWeights
                ) -> dict[str, torch.Tensor]:
    """The weighted terms that need no VGG (:data:`~videostyle.model.objective.PIXEL_TERMS`, those whose
    weight is set): temporal, tv and range, each a scalar of ``image`` ``(1, 3, H, W)`` in the graph."""
    terms = build_terms(PIXEL_TERMS, TermInputs(weights, None, {}, {}, temporal))
    return {term.name: term(image) for term in terms}


@dataclass
class FrameResult:
    """Outcome of one frame's optimisation.

    Attributes:
        image: ``(1, 3, H, W)`` float32 in [0, 1], detached.
        losses: final weighted loss terms and ``total`` (floats).
        iterations: optimiser iterations run (< requested when stopped early).
    """

    image: torch.Tensor
    losses: dict[str, float]
    iterations: int
    history: list[float] = field(default_factory=list)


def stylize_frame(objective: FrameObjective, init: torch.Tensor, *, iterations: int,
                  optimizer: str = "lbfgs", learning_rate: float = 0.02,
                  tol_loss_relative: float = 0.0, history_size: int = LBFGS_HISTORY,
                  on_iteration: Callable[[int, float], None] | None = None,
                  evaluate_result: bool = True,
                  on_image: Callable[[int, torch.Tensor], None] | None = None) -> FrameResult:
    """Optimise the image starting from ``init`` ``(1, 3, H, W)`` in [0, 1].

    ``on_iteration(done, loss)`` and ``on_image(done, image)`` are called after each iteration;
    ``image`` is the current ``(1, 3, H, W)`` variable, detached and NOT clamped (do not modify it).

    One iteration is one forward+backward pass for both optimisers (L-BFGS without line search, as
    neural-style), so the cost per iteration is one VGG evaluation. ``tol_loss_relative`` stops early
    once the loss changed by less than ``tol * loss`` over the last :data:`TOL_WINDOW` iterations
    (in either direction: L-BFGS without a line search can rise for a few steps, which is not flat).

    ``history_size``: L-BFGS's correction pairs (each two ``3 x H x W`` float32 vectors).

    ``evaluate_result``: the returned ``losses`` are those of the returned (clamped) image, at the cost
    of one more forward pass (~1/3 of an iteration); with False they are the last iteration's, i.e. of
    the image one step before the end (the video loop uses them only for its progress line).
    """
    x = init.detach().clone(memory_format=torch.contiguous_format).requires_grad_(True)
    if optimizer == "lbfgs":  # torch.optim.LBFGS's maths, without its ~100 device syncs per step
        opt = LBFGS(x, history_size=history_size)
    elif optimizer == "adam":
        opt = torch.optim.Adam([x], lr=learning_rate)
    else:
        raise ValueError(f"optimizer must be lbfgs or adam, got {optimizer!r}")

    # Losses stay on the device as 0-d tensors and are read back every TOL_WINDOW iterations, or each
    # iteration when --tol or a progress callback needs each loss: every read-back makes the host wait
    # for the device (docs/BENCHMARKS.md, "GPU").
    read_every = 1 if (on_iteration is not None or tol_loss_relative > 0) else TOL_WINDOW
    device_losses: list[torch.Tensor] = []
    history: list[float] = []
    last_parts: dict[str, torch.Tensor] = {}

    def closure() -> torch.Tensor:
        x.grad = None
        total, parts = objective.loss_and_gradient(x)
        device_losses.append(total)
        if not evaluate_result:
            last_parts.update(parts, total=total)
        return total

    done = 0
    for done in range(1, iterations + 1):
        # No projection into [0, 1] between steps: clamping breaks L-BFGS's curvature pairs (measured:
        # 10x higher final style loss on a 256 px photo); the result is clamped once at the end.
        opt.step(closure)
        if on_image is not None:
            on_image(done, x.detach())
        if done % read_every and done != iterations:
            continue
        first_new = len(history)
        history += torch.stack(device_losses[first_new:]).tolist()  # one read-back for them all
        for i in range(first_new, len(history)):
            if on_iteration is not None:
                on_iteration(i + 1, history[i])
            if not math.isfinite(history[i]):
                raise FloatingPointError(f"loss became {history[i]} at iteration {i + 1}; lower the learning "
                                         f"rate or the loss weights")
        loss = history[-1]
        if (tol_loss_relative > 0 and len(history) > TOL_WINDOW
                and abs(history[-1 - TOL_WINDOW] - loss) < tol_loss_relative * abs(loss)):
            break
    result = x.detach().clamp_(0.0, 1.0)
    final = {name: float(value) for name, value in last_parts.items()}
    if evaluate_result or not final:
        total, parts = objective.loss(result)
        final = {name: float(value) for name, value in parts.items()}
        final["total"] = float(total)
    return FrameResult(result, final, done if iterations else 0, history)


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, C, *size)``; area filter down, bilinear up."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    mode = "area" if size[0] * size[1] < image.shape[-2] * image.shape[-1] else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    return torch.nn.functional.interpolate(image, size=size, mode=mode, **kwargs)


def octave_sizes(height: int, width: int, octaves: int, *, min_edge: int = 64) -> list[tuple[int, int]]:
    """``(H, W)`` per octave, coarsest first, halving each time; octaves whose short edge would drop
    below ``min_edge`` px are skipped (VGG's relu5_1 needs a few pixels left after 4 poolings)."""
    sizes = []
    for k in reversed(range(octaves)):
        h, w = round(height / 2 ** k), round(width / 2 ** k)
        if k == 0 or min(h, w) >= min_edge:
            sizes.append((h, w))
    return sizes


def stylize_coarse_to_fine(encoder: VGGEncoder, content: torch.Tensor, init: torch.Tensor,
                           targets: StyleTargets, weights: LossWeights,
                           temporal: Sequence[TemporalTerm] = (), *, iterations: int, octaves: int = 2,
                           coarse_iterations: int | None = None, make_objective: Callable | None = None,
                           **optimiser_kwargs) -> FrameResult:
    """Optimise at 1/2^(octaves-1) of the size first, then upsample and refine at each finer octave.

    The same style targets serve every octave (Gram matrices are normalised by C*H*W, so they are
    comparable across sizes). A coarse iteration costs ~1/4 of one at the next octave up, so most of the
    work that moves large structures happens cheaply. ``iterations`` is the count at full size;
    ``coarse_iterations`` (default the same) at every coarser octave.

    ``make_objective(encoder, content, targets, weights, temporal)`` builds each octave's objective
    (default :class:`FrameObjective`; ``Stylizer.make_objective``: tiles or bands where memory is short).

    Returns the full-size result; ``iterations`` in it is the full-size count, ``history`` concatenates
    all octaves.
    """
    make_objective = make_objective or FrameObjective
    sizes = octave_sizes(content.shape[-2], content.shape[-1], octaves)
    coarse_iterations = iterations if coarse_iterations is None else coarse_iterations
    history: list[float] = []
    result = None
    change = None  # what the coarser octaves did to the init, at the last size optimised
    for level, size in enumerate(sizes):
        last = level == len(sizes) - 1
        scaled_temporal = [TemporalTerm(_resize(t.warped, size), _resize(t.mask, size), t.weight)
                           for t in temporal]
        objective = make_objective(encoder, _resize(content, size), targets, weights, scaled_temporal)
        # Start from the init at this size plus the upsampled coarse change: this keeps the init's
        # fine detail (e.g. the warped previous frame's brush strokes) instead of a blurry upsample.
        start = _resize(init, size)
        if change is not None:
            start = start + _resize(change, size)
        kwargs = dict(optimiser_kwargs)
        if not last:  # a coarse octave's losses are never reported
            kwargs.update(evaluate_result=False, on_iteration=None, on_image=None)
        result = stylize_frame(objective, start,
                               iterations=iterations if last else coarse_iterations, **kwargs)
        history += result.history
        change = result.image - _resize(init, size)
    result.history = history
    return result
