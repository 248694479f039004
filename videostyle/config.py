"""Run configuration: frozen dataclasses built once by the CLI (or the Python API).

``StyleConfig`` holds everything that changes the stylised frames; its :meth:`StyleConfig.stable_hash`
is what a resumed run must match. Settings that do not change the frames (device, encoder quality,
verbosity, work dir) live in :class:`RunOptions` and may differ between a run and its resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

DEFAULT_CONTENT_LAYERS = (("relu4_2", 1.0),)
DEFAULT_STYLE_LAYERS = (("relu1_1", 1.0), ("relu2_1", 1.0), ("relu3_1", 1.0),
                        ("relu4_1", 1.0), ("relu5_1", 1.0))

# --quality presets: the settings that trade time for quality. Iterations chosen on trained features
# (VGG-16, HED fine-tune of ImageNet VGG-16) by scripts/bench_quality.py --trace (docs/BENCHMARKS.md,
# "Trained features"): first frame near the end of its loss curve, later frames where the warm start
# stops gaining. Sizes and octaves from the untrained measurements before. Explicit flags override these.
QUALITY_PRESETS: dict[str, dict] = {
    "draft": dict(size=384, iters_first=150, iters=20, octaves=1),
    "default": dict(size=512, iters_first=300, iters=40, octaves=2),
    "high": dict(size=768, iters_first=500, iters=80, octaves=3),
}
QUALITIES = tuple(QUALITY_PRESETS)

INITS_FIRST = ("content", "noise")
INITS = ("prev-warped-inside", "prev-warped", "prev", "content", "noise")
OPTIMIZERS = ("lbfgs", "adam")
POOLINGS = ("avg", "max")
PRECISIONS = ("fp32", "bf16", "fp16")
FLOWS = ("dis", "farneback", "raft-small", "raft-large")  # flow.FLOW_METHODS, checked before any work
MODELS = ("vgg19", "vgg16")  # as features.MODELS


@dataclass(frozen=True)
class StyleConfig:
    """What the optimiser does to every frame.

    Attributes:
        styles: style image paths; ``style_weights`` blends them (normalised to sum 1; empty = equal).
        size: long edge of the working resolution, px (even sizes are kept).
        style_scale: style image long edge relative to ``size``.
        iters_first / iters: optimiser iterations for the first frame / later frames (at full size).
        octaves: coarse-to-fine levels; a frame without a warm start (the first) is first optimised at
            1/2, 1/4, ... of the size (as many iterations per level, each ~4x cheaper than the level
            above), 1 = full size only; warm-started frames run at full size only.
        content_weight, style_weight, tv_weight, temporal_weight: loss weights (content and style terms
            are normalised per layer by their target magnitude, see :mod:`videostyle.losses`).
        range_weight: weight of the penalty on pixels outside [0, 1] (0: only the final clamp).
        content_layers / style_layers: ``(layer, weight)`` pairs; layer weights are normalised to sum 1.
        pooling: ``avg`` (Gatys) or ``max`` (VGG's own).
        init_first: ``content`` or ``noise`` for frame 0; init: for later frames (the ``prev-warped``
            modes: Ruder's warm start, see :func:`videostyle.temporal.warm_start_mask`).
        flow: optical flow method; flow_offsets: temporal terms to frames t-k (``(1,)`` short-term only).
        tol_loss_relative: stop a frame early when the loss fell by less than this fraction over the
            last :data:`~videostyle.optimise.TOL_WINDOW` iterations (0 disables), as artistic-videos'
            ``-tol_loss_relative`` with its interval.
        lbfgs_history: L-BFGS correction pairs kept (neural-style's ``-lbfgs_num_correction``); each is
            two ``3 x H x W`` float32 vectors: 50 pairs are 2.5 GB at 1920x1080 (:mod:`videostyle.memory`).
        weights: ``auto|imagenet|untrained|hed|PATH`` (see :mod:`videostyle.features`).
        model: ``vgg19`` or ``vgg16``, the network whose features the losses use (``--model``).
        seed: seeds noise init; the untrained weights have their own fixed seed.
        preserve_colors: luminance-only transfer, the output keeps the content's chroma
            (:mod:`videostyle.colour`).
        mask / mask_feather: stylise only where the mask image or video is white, feathered by a
            Gaussian of this sigma in working-size px (:mod:`videostyle.masks`).
        passes / pass_blend / pass_iters: multi-pass video (:mod:`videostyle.passes`): passes after the
            first alternate backward and forward, each frame starting from its previous-pass result
            blended with the warped neighbour (weight ``pass_blend``), ``pass_iters`` iterations
            (None: ``iters``).
    """

    styles: tuple[str, ...]
    style_weights: tuple[float, ...] = ()
    size: int = QUALITY_PRESETS["default"]["size"]
    style_scale: float = 1.0
    iters_first: int = QUALITY_PRESETS["default"]["iters_first"]
    iters: int = QUALITY_PRESETS["default"]["iters"]
    octaves: int = QUALITY_PRESETS["default"]["octaves"]
    optimizer: str = "lbfgs"
    learning_rate: float = 0.02
    content_weight: float = 1.0
    style_weight: float = 1.0  # chosen on trained features, docs/BENCHMARKS.md "Trained features"
    tv_weight: float = 2.0  # halves the flat sky's checkerboard at no style cost, same section
    range_weight: float = 100.0  # keeps pixels in [0, 1] while optimising, see losses.range_penalty
    temporal_weight: float = 50.0  # chosen by scripts/bench_temporal.py, see docs/TEMPORAL.md
    content_layers: tuple[tuple[str, float], ...] = DEFAULT_CONTENT_LAYERS
    style_layers: tuple[tuple[str, float], ...] = DEFAULT_STYLE_LAYERS
    pooling: str = "avg"
    init_first: str = "content"
    init: str = "prev-warped-inside"  # see temporal.warm_start_mask
    flow: str = "dis"
    flow_offsets: tuple[int, ...] = (1,)
    tol_loss_relative: float = 0.0
    lbfgs_history: int = 50  # optimise.LBFGS_HISTORY; fewer pairs for large frames (memory)
    weights: str = "auto"
    model: str = "vgg19"
    seed: int = 0
    preserve_colors: bool = False
    mask: str | None = None
    mask_feather: float = 3.0
    passes: int = 1
    pass_blend: float = 1.0
    pass_iters: int | None = None

    def __post_init__(self):
        if not self.styles:
            raise ValueError("at least one style image is required")
        if self.style_weights and len(self.style_weights) != len(self.styles):
            raise ValueError(f"{len(self.styles)} style images but {len(self.style_weights)} style weights")
        if any(w < 0 for w in self.style_weights) or (self.style_weights and sum(self.style_weights) <= 0):
            raise ValueError(f"style weights must be >= 0 with a positive sum, got {self.style_weights}")
        if self.range_weight < 0:
            raise ValueError(f"--range-weight must be >= 0, got {self.range_weight}")
        if self.size < 16:
            raise ValueError(f"--size must be at least 16 px, got {self.size}")
        if self.lbfgs_history < 1:
            raise ValueError(f"--lbfgs-history must be at least 1, got {self.lbfgs_history}")
        if self.iters_first < 0 or self.iters < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iters_first},{self.iters}")
        if not 1 <= self.octaves <= 5:
            raise ValueError(f"--octaves must be between 1 and 5, got {self.octaves}")
        _check_choice("model", self.model, MODELS)
        from .features import check_layers  # torch only once a config is built
        check_layers([name for name, _ in (*self.content_layers, *self.style_layers)], self.model)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("pooling", self.pooling, POOLINGS)
        _check_choice("init-first", self.init_first, INITS_FIRST)
        _check_choice("init", self.init, INITS)
        _check_choice("flow", self.flow, FLOWS)
        if not self.flow_offsets or any(k < 1 for k in self.flow_offsets):
            raise ValueError(f"flow offsets must be positive integers, got {self.flow_offsets}")
        if self.mask_feather < 0:
            raise ValueError(f"--mask-feather must be >= 0 px, got {self.mask_feather}")
        if self.passes < 1:
            raise ValueError(f"--passes must be at least 1, got {self.passes}")
        if self.pass_blend < 0:
            raise ValueError(f"--pass-blend must be >= 0, got {self.pass_blend}")
        if self.pass_iters is not None and self.pass_iters < 0:
            raise ValueError(f"--pass-iters must be >= 0, got {self.pass_iters}")

    @property
    def blend_weights(self) -> tuple[float, ...]:
        """Style blend weights normalised to sum 1."""
        raw = self.style_weights or (1.0,) * len(self.styles)
        total = sum(raw)
        return tuple(w / total for w in raw)

    @property
    def needs_flow(self) -> bool:
        return self.init.startswith("prev-warped") or self.temporal_weight > 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "StyleConfig":
        tuple_fields = {f.name for f in dataclasses.fields(cls)
                        if str(f.type).startswith("tuple")}
        kwargs = {}
        for key, value in data.items():
            if key in tuple_fields:
                value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
            kwargs[key] = value
        return cls(**kwargs)

    def stable_hash(self) -> str:
        """sha256 of the canonical JSON form; equal configs give equal hashes across runs."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class RunOptions:
    """How a run is executed; none of these change the stylised frames' pixels, except ``precision``
    and the cut (``start``, ``duration``), which the manifest records on their own for a resume to match
    (``journal._MUST_MATCH``)."""

    device: str = "auto"
    crf: int = 18
    preset: str = "medium"
    output_size: str = "source"   # "source" (upscale to the input's size) or "working"
    workdir: str | None = None
    quiet: bool = False
    verbose: bool = False
    restart: bool = False
    keep_workdir: bool = False
    batch_size: int = 1           # frames journaled together; a finished batch is never redone
    precision: str = "fp32"       # VGG convolutions in fp32, bf16 or fp16 (autocast; losses stay fp32)
    # Tiled VGG (videostyle.tiled): the same frames to float rounding, so neither is a resume setting.
    tile: int | None = None       # px a side; None: chosen from max_memory (untiled when the frame fits)
    max_memory: int | None = None  # bytes for one frame's optimisation; None: the device's, less a margin
    # Many workers (videostyle.distributed): None = one process; "local" = a Ray instance started here
    # (or RAY_ADDRESS), else a Ray address. Segments of segment_frames, each with segment_overlap frames
    # of run-in cross-faded with the previous segment; ray_cpus per segment task on CPU workers. The
    # segment sizes do change frames near seams: segment work dirs are named by their frame range, so a
    # rerun with other sizes never reuses a segment that would differ. scene_cuts: a segment also starts
    # at each scene cut, with no run-in (videostyle.scenes; the video is decoded once more to find them).
    ray: str | None = None
    segment_frames: int = 300
    segment_overlap: int = 10
    ray_cpus: int = 1
    scene_cuts: bool = True
    save_every: int = 0           # first frame's image every N iterations beside the output (0: off)
    # The part of the video to stylise (--start/--duration, seconds from the first frame; None: to the
    # end). It decides which frames are made, so the manifest records it on its own for a resume to match.
    start: float = 0.0
    duration: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"--{name} must be one of {', '.join(choices)}; got {value!r}")
