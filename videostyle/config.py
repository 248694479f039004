"""Settings, in one place: the frozen dataclasses built once by the CLI (or the Python API), and one
table entry per field (:data:`SETTINGS`: its flag and help; the default is the dataclass field's) that the
CLI's parser and ``videostyle preview``'s "the stylize command" both read.

``StyleConfig`` holds what the optimiser does to every frame; its :meth:`StyleConfig.stable_hash` is what
a resumed run must match. :class:`RunOptions` holds how a run is carried out; a resume need not match
them, with one exception the manifest records on its own: ``precision`` (bf16/fp16 change the pixels).
``tile``/``max_memory`` change frames only to float rounding, except where the memory plan keeps fewer
L-BFGS pairs than ``lbfgs_history``; a resume keeps the tile and the pairs it started with (the manifest);
the ``--ray`` segment sizes name the segment work dirs, so other sizes never reuse a segment.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from videostyle.vgg_layers import MODELS, check_layers  # torch-free: a command line is checked without torch

# RunOptions.tile (``--tile bands``), the memory plan's tile and a run's manifest, for VGG run block by block
# in bands of rows (videostyle.model.banded) rather than on tiles.
BANDS = "bands"

DEFAULT_CONTENT_LAYERS = (("relu4_2", 1.0),)
DEFAULT_STYLE_LAYERS = (("relu1_1", 1.0), ("relu2_1", 1.0), ("relu3_1", 1.0),
                        ("relu4_1", 1.0), ("relu5_1", 1.0))

# --quality presets: the settings that trade time for quality. Iterations chosen on trained features
# (VGG-16, HED fine-tune of ImageNet VGG-16) by scripts/bench_quality.py --trace (docs/BENCHMARKS.md,
# "Trained features"): first frame near the end of its loss curve, later frames where the warm start
# stops gaining. Octaves measured on trained features too (2 against 1 at 256 px, 3 against 2 at 512 px);
# the sizes are from the untrained measurements before. Explicit flags override these.
QUALITY_PRESETS: dict[str, dict] = {
    "draft": dict(size=384, iters_first=150, iters=20, octaves=1),
    "default": dict(size=512, iters_first=300, iters=40, octaves=2),
    "high": dict(size=768, iters_first=500, iters=80, octaves=3),
}
QUALITIES = tuple(QUALITY_PRESETS)

INITS_FIRST = ("content", "noise")
INITS = ("prev-warped-unchanged", "prev-warped-inside", "prev-warped", "prev", "content", "noise")
OPTIMIZERS = ("lbfgs", "adam")
POOLINGS = ("avg", "max")
PRECISIONS = ("fp32", "bf16", "fp16")
FLOWS = ("dis", "farneback", "raft-small", "raft-large")  # flow.FLOW_METHODS, checked before any work


# StyleConfig fields added after work dirs already existed, with the value that reproduces what configs
# recorded without them did (StyleConfig.stable_hash, StyleConfig.from_dict).
ADDED_FIELDS = {"new_content_style": 0.0}


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
            are normalised per layer by their target magnitude, see :mod:`videostyle.model.losses`).
        new_content_style: weight, relative to ``style_weight``, of the style term on the new content
            alone (the pixels a warm start takes from the content: scenery entering the frame, what a
            moving thing uncovers; :class:`videostyle.model.objective.NewContentStyle`); 0 turns it off.
        range_weight: weight of the penalty on pixels outside [0, 1] (0: only the final clamp).
        content_layers / style_layers: ``(layer, weight)`` pairs; layer weights are normalised to sum 1.
        pooling: ``avg`` (Gatys) or ``max`` (VGG's own).
        init_first: ``content`` or ``noise`` for frame 0; init: for later frames (the ``prev-warped``
            modes: Ruder's warm start, see :func:`videostyle.motion.temporal.warm_start_mask`).
        flow: optical flow method; flow_offsets: temporal terms to frames t-k (``(1,)`` short-term only).
        tol_loss_relative: stop a frame early when the loss fell by less than this fraction over the
            last :data:`~videostyle.model.optimise.TOL_WINDOW` iterations (0 disables), as artistic-videos'
            ``-tol_loss_relative`` with its interval.
        lbfgs_history: L-BFGS correction pairs kept (neural-style's ``-lbfgs_num_correction``); each is
            two ``3 x H x W`` float32 vectors: 50 pairs are 2.5 GB at 1920x1080 (:mod:`videostyle.model.memory`).
        weights: ``auto|imagenet|untrained|hed|PATH`` (see :mod:`videostyle.model.features`).
        model: ``vgg19`` or ``vgg16``, the network whose features the losses use (``--model``).
        seed: seeds noise init; the untrained weights have their own fixed seed.
        preserve_colors: luminance-only transfer, the output keeps the content's chroma
            (:mod:`videostyle.model.colour`).
        mask / mask_feather: stylise only where the mask image or video is white, feathered by a
            Gaussian of this sigma in working-size px (:mod:`videostyle.model.masks`).
        passes / pass_blend / pass_iters: multi-pass video (:mod:`videostyle.run.passes`): passes after the
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
    new_content_style: float = 0.5  # x style_weight; docs/BENCHMARKS.md "New content"
    content_layers: tuple[tuple[str, float], ...] = DEFAULT_CONTENT_LAYERS
    style_layers: tuple[tuple[str, float], ...] = DEFAULT_STYLE_LAYERS
    pooling: str = "avg"
    init_first: str = "content"
    init: str = "prev-warped-unchanged"  # see temporal.warm_start_mask
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
        if self.new_content_style < 0:
            raise ValueError(f"--new-content-style must be >= 0, got {self.new_content_style}")
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
        """The config a manifest recorded; a field added since (:data:`ADDED_FIELDS`) takes the value that
        makes the frames the recorded config made, so an older work dir resumes as it began."""
        tuple_fields = {f.name for f in dataclasses.fields(cls)
                        if str(f.type).startswith("tuple")}
        kwargs = {key: value for key, value in ADDED_FIELDS.items() if key not in data}
        for key, value in data.items():
            if key in tuple_fields:
                value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
            kwargs[key] = value
        return cls(**kwargs)

    def stable_hash(self) -> str:
        """sha256 of the canonical JSON form; equal configs give equal hashes across runs. A field added
        since the first manifests is left out at its :data:`ADDED_FIELDS` value (what configs without it
        did), so an older work dir's hash still matches."""
        data = {k: v for k, v in self.to_dict().items() if not (k in ADDED_FIELDS and v == ADDED_FIELDS[k])}
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
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
    # The memory plan (videostyle.model.memory.plan_memory): tiled VGG gives the same frames to float
    # rounding; fewer L-BFGS pairs change them. The manifest records the plan and a resume keeps it.
    tile: int | str | None = None  # px a side, or "bands"; None: chosen from max_memory (untiled when the frame fits)
    max_memory: int | None = None  # bytes, the run's peak (CPU: the process's RSS); None: the device's, less a margin
    # Many workers (videostyle.run.distributed): None = one process; "local" = a Ray instance started here
    # (or RAY_ADDRESS), else a Ray address. Segments of segment_frames, each with segment_overlap frames
    # of run-in cross-faded with the previous segment; ray_cpus per segment task on CPU workers. The
    # segment sizes do change frames near seams: segment work dirs are named by their frame range, so a
    # rerun with other sizes never reuses a segment that would differ. scene_cuts: a segment also starts
    # at each scene cut, with no run-in (videostyle.motion.scenes; the video is decoded once more to find them).
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


# --- the table: field -> flag and help ------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """The command-line face of one field: its ``flag`` and ``help`` (``{default}`` in the help is the
    dataclass field's default). The parser's types and the checks stay with the CLI and the dataclass."""

    flag: str
    help: str = ""
    metavar: str | None = None


def default(cls, name: str):
    """The default of field ``name`` of dataclass ``cls`` (:class:`StyleConfig` or :class:`RunOptions`)."""
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory()  # type: ignore[misc]


def shown_default(value) -> str:
    """A default as the help text shows it (``2`` for 2.0)."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(shown_default(v) for v in value)
    return str(value)


SETTINGS: dict[type, dict[str, Setting]] = {
    StyleConfig: {
        "style_weights": Setting("--style-weights", "blend weights, e.g. 0.7,0.3"),
        "style_scale": Setting("--style-scale", "style image size relative to --size"),
        "content_weight": Setting("--content-weight"),
        "style_weight": Setting("--style-weight", "default {default} (docs/BENCHMARKS.md)"),
        "tv_weight": Setting("--tv-weight", "default {default}"),
        "range_weight": Setting("--range-weight", "penalty on pixels outside [0, 1] while optimising, so the "
                                "final clamp changes almost nothing (default {default}; 0: clamp only at the end)"),
        "content_layers": Setting("--content-layers", "e.g. relu4_2"),
        "style_layers": Setting("--style-layers", "e.g. relu1_1:1,relu2_1:1,relu3_1:1,relu4_1:1,relu5_1:1"),
        "pooling": Setting("--pooling"),
        "optimizer": Setting("--optimizer"),
        "learning_rate": Setting("--lr", "Adam learning rate (pixels in [0,1])"),
        "init_first": Setting("--init-first", "init of the first frame"),
        "tol_loss_relative": Setting("--tol", "stop a frame early once its loss fell by less than this fraction "
                                     "over the last 10 iterations, --iters being the most (0: off; e.g. 0.01)"),
        "lbfgs_history": Setting("--lbfgs-history", "L-BFGS correction pairs kept (default {default}); each costs "
                                 "2 x 3 x H x W floats: fewer for large frames in little memory", metavar="N"),
        "weights": Setting("--weights", "auto (ImageNet from the torch hub cache or a download, else untrained "
                           "with a warning) | imagenet | untrained | hed (VGG-16 (HED fine-tune of ImageNet "
                           "VGG-16), made offline by scripts/trained_weights.py; needs --model vgg16) | PATH to "
                           "a state dict (default {default})"),
        "model": Setting("--model", "network whose features the losses use: vgg19 (default) or vgg16"),
        "seed": Setting("--seed"),
        "preserve_colors": Setting("--preserve-colors", "luminance-only transfer: keep the content's colours "
                                   "(Gatys et al. 2016)"),
        "mask": Setting("--mask", "stylise only where this greyscale image or video (frame t for frame t) is "
                        "white; keep the rest of the frame"),
        "mask_feather": Setting("--mask-feather", "soft mask edges: Gaussian sigma in working-size px "
                                "(default {default}; 0: hard edges)"),
        "passes": Setting("--passes", "multi-pass: passes after the first alternate backward/forward, blending "
                          "each frame with its warped neighbour, for less flicker (default {default})"),
        "pass_blend": Setting("--pass-blend", "weight of the warped neighbour in a later pass's init "
                              "(default {default})"),
        "pass_iters": Setting("--pass-iters", "iterations per frame in passes after the first (default: the "
                              "later-frame --iters)"),
        "init": Setting("--init", "init of later frames: the previous output warped by the flow, with the "
                        "content frame where the flow leaves the picture, or fails its check where the source "
                        "changed, as where a moving thing uncovers the scene (prev-warped-unchanged, default), "
                        "only where the "
                        "flow leaves the picture (prev-warped-inside), or wherever the flow is unreliable "
                        "(prev-warped)"),
        "temporal_weight": Setting("--temporal-weight", "weight of the temporal consistency loss; 0 turns it "
                                   "off (default {default}, measured in docs/TEMPORAL.md)"),
        "new_content_style": Setting("--new-content-style", "style term on new content alone (scenery entering "
                                     "the frame, what a moving thing uncovers), x --style-weight, so it gets "
                                     "painted like the rest (default {default}; 0: off)"),
        "flow": Setting("--flow", "|".join(FLOWS)),
        "flow_offsets": Setting("--flow-indices", "temporal terms to frames t-k, e.g. 1,2,4 (Ruder's long-term "
                                "loss)"),
        "size": Setting("--size"),
        "octaves": Setting("--octaves"),
    },
    RunOptions: {
        "device": Setting("--device", "auto|cpu|cuda|cuda:N"),
        "precision": Setting("--precision", "VGG's convolutions in fp32 (default), bf16 or fp16 (autocast, for "
                             "GPUs with tensor cores; the image and the losses stay fp32)"),
        "max_memory": Setting("--max-memory", "the run's peak memory, e.g. 2.5GB (the process's on a CPU; on a "
                              "GPU, what torch reserves there, a hard limit): larger frames run VGG in bands "
                              "(CPU) or on tiles (GPU), with the same result to float rounding, and keep fewer "
                              "L-BFGS pairs if they would not fit otherwise (default: the device's, less a "
                              "margin)", metavar="SIZE"),
        "tile": Setting("--tile", "run VGG on tiles of at most PX px a side, or 'bands' (block by block in bands "
                        "of rows) (default: only when --max-memory needs it)", metavar="PX|bands"),
        "crf": Setting("--crf", "H.264 quality, lower is better (default {default})"),
        "preset": Setting("--preset", "x264 preset (default {default})"),
        "output_size": Setting("--output-size", "encode at the source's size (default) or at the working size"),
        "workdir": Setting("--workdir", "work dir for resumable frames (default: OUTPUT.videostyle-work)"),
        "restart": Setting("--restart", "start over; the old work dir is kept aside"),
        "keep_workdir": Setting("--keep-workdir", "keep the stylised frames after encoding"),
        "batch_size": Setting("--batch-size", "frames journaled together (default {default}); a finished batch "
                              "is never redone"),
        "save_every": Setting("--save-every", "write the first frame every N iterations beside the output as "
                              "OUTPUT_STEM.iter_NNNN.png, for tuning (default {default}: off)", metavar="N"),
        "ray": Setting("--ray", "stylise segments of the video as Ray tasks; without ADDRESS on a Ray instance "
                       "started here (or RAY_ADDRESS), else on the cluster at ADDRESS (e.g. auto)",
                       metavar="ADDRESS"),
        "segment_frames": Setting("--segment-frames", "frames per segment (default {default})"),
        "segment_overlap": Setting("--segment-overlap", "run-in frames cross-faded with the previous segment "
                                   "(default {default})"),
        "ray_cpus": Setting("--ray-cpus", "CPUs per segment task on CPU workers (default {default})"),
        "scene_cuts": Setting("--scene-cuts", "also start a segment at each scene cut, with no run-in (default "
                              "on; the video is scanned once at 128 px before the tasks start)"),
        "start": Setting("--start", "stylise from this time on: SS, MM:SS or HH:MM:SS(.fff) after the first frame "
                         "(default 0); the output, and its audio, start at 0", metavar="TIME"),
        "duration": Setting("--duration", "stylise this long from --start (SS, MM:SS or HH:MM:SS(.fff); default: "
                            "to the end); the audio is cut to match", metavar="TIME"),
    },
}


def flag(cls, name: str) -> str:
    """The flag of field ``name`` of ``cls``."""
    return SETTINGS[cls][name].flag


def help_text(cls, name: str) -> str:
    """The help of field ``name`` of ``cls``, its default filled in."""
    return SETTINGS[cls][name].help.format(default=shown_default(default(cls, name)))
