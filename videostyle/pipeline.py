"""The video loop: probe -> decode (thread) -> flow (worker) -> optimise -> journal (thread) -> encode
(thread).

Flow depends only on source frames, so :class:`~videostyle.flow.FlowWorker` computes it ahead of the
optimiser. Every finished frame is journaled (see :mod:`videostyle.journal`), and the encoder gets only
journaled frames (:mod:`videostyle.encode_stream`), so an interrupted run resumes without redoing
finished frames and produces the same frames as an uninterrupted one: the warm start always uses the
saved 8-bit previous frame.
"""

from __future__ import annotations

import logging
import os
import platform
import shlex
import shutil
import signal
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from . import __version__, colour, images, memory, scenes
from .config import RunOptions, StyleConfig
from .encode_stream import StreamingEncoder
from .errors import InputError, OutputError, ResumeError
from .features import LAYER_NAMES, WEIGHTS_NAMES, VGGEncoder, resolve_weights
from .flow import FlowEstimator, FlowWorker
from .frame_writer import FrameWriter
from .journal import WorkDir, file_fingerprint
from .masks import FrameMasks, composite
from .optimise import (FrameObjective, FrameResult, LossWeights, StyleTargets,
                       TemporalTerm, compute_style_targets, stylise_coarse_to_fine, stylise_frame)
from .paths import check_not_an_input, style_inputs
from .snapshots import check_snapshots_not_inputs
from .temporal import initial_image, long_term_masks, mask_tensor, warm_start_mask, warp_previous
from .tiled import TILE_HALO, TiledObjective
from .timing import PHASES
from .video.decode import FramePrefetcher, iter_frames
from .video.encode import check_encoder_options, check_output_path, remove_partial_outputs
from .video.probe import VideoInfo, cut_seconds, dropped_streams_note, probe_video, with_cut

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``/``cuda``/``cuda:N`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise InputError(f"--device must be auto, cpu, cuda or cuda:N; got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name} requested but CUDA is not available; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices (cuda:0 .. "
                         f"cuda:{torch.cuda.device_count() - 1})")
    return device


def _normalised(pairs) -> dict[str, float]:
    total = sum(w for _, w in pairs)
    return {layer: w / total for layer, w in pairs}


class Stylizer:
    """Holds what is fixed for a whole run: device, VGG encoder, style targets and loss weights.

    With ``preserve_colors`` the optimiser works on luminance: :meth:`to_optimised` maps frames into that
    space and :meth:`finish` maps a result back (content chroma, then the ``--mask`` composite).
    ``colour_reference`` ``(1, 3, H, W)`` RGB at the working size: the frame whose luminance statistics
    the style luminance is matched to (the first frame of a video, so the targets are the same for
    every frame); None: not matched.

    ``precision``: ``fp32``, or ``bf16``/``fp16`` to run VGG's convolutions under autocast (the image,
    the Gram matrices and the losses stay float32); see :class:`~videostyle.features.VGGEncoder`.

    ``tile``: evaluate VGG on tiles of at most this many px a side (:mod:`videostyle.tiled`) when the
    frame is larger; None: the whole frame at once.
    """

    on_step: Callable[[], None] | None = None  # called after each optimiser iteration (a progress bar)

    def __init__(self, cfg: StyleConfig, *, device: torch.device, working_size: tuple[int, int],
                 colour_reference: torch.Tensor | None = None, precision: str = "fp32",
                 tile: int | None = None):
        self.cfg = cfg
        self.device = device
        self.precision = precision
        self.tile = tile
        # The mask first: a bad --mask is reported before the weights are loaded.
        self.masks = FrameMasks(cfg.mask, working_size, feather_px=cfg.mask_feather) if cfg.mask else None
        self.weights = resolve_weights(cfg.weights, cfg.model)
        self.loss_weights = LossWeights(cfg.content_weight, cfg.style_weight, cfg.tv_weight,
                                        _normalised(cfg.content_layers), _normalised(cfg.style_layers),
                                        range=cfg.range_weight)
        layers = [*self.loss_weights.content_layers, *self.loss_weights.style_layers]
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input size for the whole run: pick the fastest
        self.encoder = VGGEncoder(layers, self.weights, pooling=cfg.pooling,
                                  precision=precision).to(device)
        self.colour_reference = colour_reference
        self.targets = self._style_targets(working_size)

    def _style_targets(self, working_size: tuple[int, int]) -> StyleTargets:
        long_edge = max(16, int(round(max(working_size) * self.cfg.style_scale)))
        style_images = []
        for path in self.cfg.styles:
            rgb = images.load_image(path)
            rgb = images.resize_rgb(rgb, check_image_shape("style image", path, (rgb.shape[1], rgb.shape[0]),
                                                           long_edge, self.cfg))
            style = images.to_tensor(rgb, self.device)
            if self.cfg.preserve_colors:
                style = colour.luminance(style)
                if self.colour_reference is not None:
                    style = colour.match_luminance(style, colour.luminance(self.colour_reference))
            style_images.append(style)
        return compute_style_targets(self.encoder, style_images, self.cfg.blend_weights,
                                     list(self.loss_weights.style_layers))

    def stylise(self, content: torch.Tensor, init: torch.Tensor, *, iterations: int,
                temporal: tuple[TemporalTerm, ...] = (), warm_started: bool = False,
                evaluate_result: bool = True, on_image: Callable | None = None) -> FrameResult:
        """Optimise one frame: ``content`` and ``init`` ``(1, 3, H, W)`` in the optimised space
        (:meth:`to_optimised`).

        Coarse-to-fine (the config's ``octaves``, ``iterations`` at every level; ``on_image`` sees the
        full-size level only) for frames optimised from scratch. A ``warm_started`` frame is optimised
        at full size only: it inherits its large-scale structure from the frame before, and measured
        (docs/BENCHMARKS.md), coarse levels there cost more iterations to the same loss than they save.
        """
        kwargs = dict(optimizer=self.cfg.optimizer, learning_rate=self.cfg.learning_rate,
                      tol_loss_relative=self.cfg.tol_loss_relative, history_size=self.cfg.lbfgs_history,
                      evaluate_result=evaluate_result,
                      on_image=on_image)
        if self.cfg.octaves > 1 and not warm_started:
            return stylise_coarse_to_fine(self.encoder, content, init, self.targets, self.loss_weights,
                                          temporal, iterations=iterations, octaves=self.cfg.octaves,
                                          make_objective=self.make_objective, **kwargs)
        objective = self.make_objective(self.encoder, content, self.targets, self.loss_weights, temporal)
        return stylise_frame(objective, init, iterations=iterations, **kwargs)

    def plan_tiles(self, working_size: tuple[int, int], *, tile: int | None = None,
                   max_memory: int | None = None) -> None:
        """Sets :attr:`tile` for frames of ``working_size`` ``(W, H)``: ``tile`` when given, else the
        largest tile whose peak (:mod:`videostyle.memory`) fits ``max_memory`` bytes (default: what the
        device has, less a margin), None when the whole frame fits."""
        if tile is not None:
            self.tile = tile
            return
        budget = max_memory if max_memory is not None else default_memory_budget(self.device)
        if budget is None:
            return
        width, height = working_size
        try:
            self.tile = memory.choose_tile(
                height, width, [name for name, _ in self.encoder.stack.named_children()], budget_bytes=budget,
                halo=TILE_HALO, precision=self.precision, read_layers=self.encoder.layers,
                history_size=self.cfg.lbfgs_history,
                weights_bytes=sum(p.numel() * p.element_size() for p in self.encoder.parameters()))
        except ValueError as exc:
            raise InputError(f"{exc}; lower --lbfgs-history or --size, or raise --max-memory") from exc
        if self.tile is not None:
            log.info("%dx%d px frames are optimised in tiles of %d px to fit %.1f GiB", width, height,
                     self.tile, budget / 2**30)

    def make_objective(self, encoder, content, targets, weights, temporal=()):
        """The frame objective: VGG on the whole frame, or on tiles of ``self.tile`` px (the same
        gradient to float rounding, in bounded memory: :mod:`videostyle.tiled`)."""
        if self.tile is None or max(content.shape[-2:]) <= self.tile:
            objective = FrameObjective(encoder, content, targets, weights, temporal)
        else:
            objective = TiledObjective(encoder, content, targets, weights, temporal, tile=self.tile, halo=TILE_HALO)
        return objective if self.on_step is None else _CountedObjective(objective, self.on_step)

    def to_optimised(self, image: torch.Tensor) -> torch.Tensor:
        """An RGB frame ``(1, 3, H, W)`` in [0, 1] in the space the optimiser works in: its luminance
        with ``preserve_colors`` (so warm starts and temporal terms from saved frames stay in Y), else
        itself."""
        return colour.luminance(image) if self.cfg.preserve_colors else image

    def finish(self, image: torch.Tensor, content: torch.Tensor, index: int) -> torch.Tensor:
        """The frame to save from an optimised ``image``: with the chroma of ``content`` (RGB, working
        size) when preserving colours, then kept as ``content`` outside the mask of frame ``index``."""
        if self.cfg.preserve_colors:
            image = colour.with_chroma_of(image, content)
        if self.masks is not None:
            image = composite(image, content, self.masks.tensor(index, image.device))
        return image


class _CountedObjective:
    """An objective that calls ``on_step()`` after each gradient evaluation (= one optimiser iteration:
    see :func:`~videostyle.optimise.stylise_frame`), for a progress bar over iterations."""

    def __init__(self, objective, on_step: Callable[[], None]):
        self._objective = objective
        self._on_step = on_step

    def loss_and_gradient(self, image: torch.Tensor):
        out = self._objective.loss_and_gradient(image)
        self._on_step()
        return out

    def __getattr__(self, name):
        return getattr(self._objective, name)

    def __call__(self, image: torch.Tensor):
        return self._objective(image)


@dataclass(frozen=True)
class RunSummary:
    output: Path
    frames: int
    resumed_from: int
    seconds_per_frame: float
    weights_id: str
    workdir: Path


ProgressFactory = Callable[..., object]


def default_memory_budget(device: torch.device) -> int | None:
    """Bytes a frame's optimisation may use by default: 90% of a GPU's memory less 0.5 GiB (CUDA's
    context is outside torch's allocator), or 60% of the memory available on the CPU (measured there:
    peak RSS 1.6x :mod:`videostyle.memory`'s model); None where unknown."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * 0.9) - (512 << 20)
    available = _available_memory()
    return None if available is None else int(available * 0.6)


def default_workdir(output: Path) -> Path:
    return output.with_name(output.name + ".videostyle-work")


def build_manifest(cfg: StyleConfig, info: VideoInfo, weights_id: str, working: tuple[int, int], *,
                   output: Path, opts: RunOptions) -> dict:
    """What a work dir records: what a resume must match, and what `videostyle resume` needs."""
    return {
        "output": str(output.resolve()),
        "run_options": opts.to_dict(),
        "config_hash": cfg.stable_hash(),
        "config": cfg.to_dict(),
        "source": str(Path(info.path).resolve()),
        "source_fingerprint": file_fingerprint(info.path),
        "style_fingerprints": [file_fingerprint(p) for p in cfg.styles],
        "mask_fingerprint": file_fingerprint(cfg.mask) if cfg.mask else None,
        "weights_id": weights_id,
        "working_size": list(working),
        "source_size": [info.width, info.height],
        "frame_count_estimate": estimated_frame_count(info),
        "versions": package_versions(),
        "precision": opts.precision,  # changes pixels: a resume must match it (journal._MUST_MATCH)
        "cut": [info.cut.start_s, info.cut.duration_s] if info.cut is not None else None,  # the same
    }


def machine_record(device: torch.device | str | None = None, threads: int | None = None) -> dict:
    """Where frames are made, beyond the package versions: device type (and GPU name), torch's version and
    CPU thread count. The same settings give byte-identical frames only on the same of these."""
    kind = device.type if isinstance(device, torch.device) else str(device or "auto").split(":")[0]
    record = {"device": kind, "torch": torch.__version__,
              "threads": int(threads if threads is not None else torch.get_num_threads())}
    if kind == "cuda" and torch.cuda.is_available():
        record["gpu"] = torch.cuda.get_device_name(device)
    return record


def package_versions() -> dict[str, str]:
    """Versions of what decides the frames' bytes (recorded in the manifest; a resume warns on change)."""
    import av
    import cv2
    import PIL

    return {"videostyle": __version__, "torch": torch.__version__, "av": av.__version__,
            "numpy": np.__version__, "opencv": cv2.__version__, "pillow": PIL.__version__,
            "python": platform.python_version()}


class EstimatedCount(int):
    """A frame count that is an estimate (no count in the container): a progress bar shows it as ``~N``."""


def estimated_frame_count(info: VideoInfo) -> int | None:
    """The container's frame count (an ``int``); else an :class:`EstimatedCount`: duration x average rate
    (MKV states no count), or the count from the packets (``info.frame_count_estimate``: no duration
    either, as a browser's WebM); else None. With a cut, the frames of the cut."""
    if info.frame_count and info.cut is None:
        return info.frame_count
    duration = cut_seconds(info)
    if duration and info.average_rate:
        return EstimatedCount(max(1, round(duration * float(info.average_rate))))
    if info.frame_count_estimate:
        return EstimatedCount(info.frame_count_estimate)
    return None


def stylize_video(source: str | os.PathLike, output: str | os.PathLike, cfg: StyleConfig,
                  opts: RunOptions = RunOptions(), *, progress: ProgressFactory | None = None) -> RunSummary:
    """Stylise ``source`` into ``output`` (MP4/MOV/MKV), resuming from the work dir when possible.

    Args:
        progress: optional ``tqdm``-like factory called as ``progress(total=..., initial=...)``; the
            returned object gets ``update(1)``, ``set_postfix_str(str)`` and ``close()``.
    """
    if opts.ray is not None:  # many workers: segments of the video as Ray tasks (videostyle.distributed)
        if opts.start or opts.duration is not None:
            raise InputError("--start/--duration do not work with --ray yet: stylise the part in one process "
                             "(drop --ray) or cut the video first")
        from .distributed import stylize_video_ray
        return stylize_video_ray(source, output, cfg, opts, progress=progress)
    plan = plan_run(source, output, cfg, opts)
    cfg, info, output, working, workdir = plan.cfg, plan.info, plan.output, plan.working, plan.workdir
    check_disk_space(workdir, working, estimated_frame_count(info))
    device = pick_device(opts.device)
    reference = _first_frame(info, working, device) if cfg.preserve_colors else None
    stylizer = Stylizer(cfg, device=device, working_size=working, colour_reference=reference,
                        precision=opts.precision)
    stylizer.plan_tiles(working, tile=opts.tile, max_memory=opts.max_memory)
    work, _ = open_run_workdir(plan, stylizer.weights.weights_id, opts, device=device)
    with work:  # locked until the end; a run stopped before its first frame leaves no work dir behind
        _keep_tiling(work, stylizer, opts)
        return _stylize_in_workdir(plan, stylizer, work, opts, progress)


def _keep_tiling(work: WorkDir, stylizer: Stylizer, opts: RunOptions) -> None:
    """A resume keeps the tiling the run started with, unless ``--tile`` says otherwise: the default
    tile follows the memory free at the time, and tiled and untiled frames differ by float rounding,
    which would end the byte-identical resume. The first run records its tile in the manifest."""
    if opts.tile is None and "tile" in work.manifest:
        stylizer.tile = work.manifest["tile"]
    elif work.manifest.get("tile", "unset") != stylizer.tile:
        work.update_manifest(tile=stylizer.tile)


def _stylize_in_workdir(plan: RunPlan, stylizer: Stylizer, work: WorkDir, opts: RunOptions,
                        progress: ProgressFactory | None) -> RunSummary:
    cfg, info, output, working, workdir = plan.cfg, plan.info, plan.output, plan.working, plan.workdir
    resumed_from = work.finished_count
    PHASES.reset()
    t0 = time.monotonic()
    total = work.manifest.get("frame_count")
    done_now = 0
    remove_partial_outputs(output)  # what an encode killed earlier left beside the output
    # One pass: the output is encoded while frames are made. More passes: the last pass's frames are
    # the output, encoded at the end.
    encoder = None
    if cfg.passes == 1:
        encoder = StreamingEncoder(work, info, output, plan.out_size, crf=opts.crf, preset=opts.preset,
                                   before_frame=_encode_kill_hook)
    try:
        if total is None or work.finished_count < total:
            done_now = _stylise_frames(info, stylizer, work, working, progress=progress, verbose=opts.verbose,
                                       batch_size=opts.batch_size,
                                       snapshots=_snapshot_writer(output, opts.save_every),
                                       on_journaled=encoder.add if encoder is not None else None)
            work.update_manifest(frame_count=work.finished_count)  # decoding is complete: the real count
    except BaseException:
        if encoder is not None:
            encoder.abort()  # no output; the frames are journaled
        raise
    final = work
    if cfg.passes > 1:
        from .passes import run_passes
        final, done_later = run_passes(info, stylizer, work, working, progress=progress,
                                       verbose=opts.verbose)
        done_now += done_later
    elapsed = time.monotonic() - t0
    if encoder is None or not encoder.finish():
        if encoder is not None:
            log.info("encoding while stylising failed (%s); encoding the %d journaled frames again",
                     encoder.error, final.finished_count)
        _encode_journaled(final, info, output, plan.out_size, opts)
    run_seconds = time.monotonic() - t0
    log.info("busy time per phase (share of the %.1f s run): %s", run_seconds, PHASES.summary(run_seconds))
    summary = RunSummary(output, work.finished_count, resumed_from,
                         elapsed / done_now if done_now else 0.0, stylizer.weights.weights_id, workdir)
    if not opts.keep_workdir:
        work.remove()
    return summary


@dataclass(frozen=True)
class RunPlan:
    """A video run as checked before any work (:func:`plan_run`); sizes are ``(W, H)`` px.

    ``cfg`` has absolute style (and weights) paths; ``workdir`` is as given (or the default beside the
    output), not resolved, so messages show the user's path.
    """

    cfg: StyleConfig
    info: VideoInfo
    output: Path
    working: tuple[int, int]
    out_size: tuple[int, int]
    workdir: Path


def plan_run(source: str | os.PathLike, output: str | os.PathLike, cfg: StyleConfig,
             opts: RunOptions) -> RunPlan:
    """Probe the source and check everything that can be checked before the (possibly hours of) work
    starts, for a single-process or a ``--ray`` run alike (the disk space check needs the run's frame
    count and is left to the caller)."""
    output = Path(output)
    cfg = _with_absolute_paths(cfg)  # the manifest must work from any directory (`videostyle resume`)
    info = with_cut(probe_video(source), opts.start, opts.duration)
    if info.cut is not None and cfg.mask and not _opens_as_image(cfg.mask):
        raise InputError("a video --mask does not work with --start/--duration yet (its frames are matched "
                         "from the video's first frame); use an image mask or cut the mask video too")
    if info.frame_count is None and cut_seconds(info) is None:
        info = _with_packet_estimate(info)
    note_dropped_streams(info)
    check_output_path(output, input_path=source)
    check_not_an_input(output, style_inputs(cfg))
    check_snapshots_not_inputs(output, opts.save_every, [("input video", source), *style_inputs(cfg)])
    check_encoder_options(opts.crf, opts.preset)
    if opts.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {opts.batch_size}")
    working = images.working_size(info.width, info.height, cfg.size)
    out_size = (info.width, info.height) if opts.output_size == "source" else working
    check_encodable(out_size, source_size=(info.width, info.height))
    check_working_size(cfg, working)
    check_memory((info.width, info.height), out_size)
    workdir = Path(opts.workdir) if opts.workdir else default_workdir(output)
    return RunPlan(cfg, info, output, working, out_size, workdir)


def _opens_as_image(path: str | os.PathLike) -> bool:
    """True when Pillow reads ``path`` (a still mask), False for anything else (a video, a missing file)."""
    try:
        with Image.open(path):
            return True
    except Exception:
        return False


def _with_packet_estimate(info: VideoInfo) -> VideoInfo:
    """``info`` with ``frame_count_estimate`` from its packets (a container with neither a count nor a
    duration, as a browser's WebM), for the progress bar's total and ETA."""
    from .video.decode import estimate_frame_count
    return replace(info, frame_count_estimate=estimate_frame_count(info))


def note_dropped_streams(info: VideoInfo) -> None:
    """Say once (stderr) which of the source's streams the output leaves out (GoPro GPMF, timecode...)."""
    note = dropped_streams_note(info)
    if note:
        print(f"videostyle: note: {note}", file=sys.stderr)


def open_run_workdir(plan: RunPlan, weights_id: str, opts: RunOptions, *,
                     device: torch.device | None = None, threads: int | None = None) -> tuple[WorkDir, dict]:
    """Create or resume the run's work dir (refused when it belongs to another run, or in use by another
    process); returns it, locked (use it as a context manager), and this run's manifest (on a resume,
    the work dir keeps the manifest it was made with). ``device``/``threads``: where the frames are
    made (default: ``opts.device``, this process's torch threads), recorded to warn on a resume
    elsewhere."""
    run_opts = replace(opts, workdir=str(plan.workdir.resolve()), restart=False)
    manifest = build_manifest(plan.cfg, plan.info, weights_id, plan.working, output=plan.output, opts=run_opts)
    manifest["machine"] = machine_record(device, threads)
    work = WorkDir.open(plan.workdir, manifest, restart=opts.restart)
    try:
        _note_resume(work, manifest)
    except BaseException:
        work.close()
        raise
    return work, manifest


def _first_frame(info: VideoInfo, working: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Frame 0 of the video at the working size, ``(1, 3, H, W)`` in [0, 1]."""
    frames = iter_frames(info)
    try:
        return images.to_tensor(images.resize_rgb(next(frames).rgb, working), device)
    finally:
        frames.close()


def _snapshot_writer(output: Path, every: int):
    """``--save-every``: a :class:`~videostyle.snapshots.SnapshotWriter`, or None when off."""
    if every <= 0:
        return None
    from .snapshots import SnapshotWriter
    return SnapshotWriter(output, every)


def _snapshot_hook(writer, stylizer: Stylizer, content: torch.Tensor) -> Callable | None:
    """``on_image`` for the optimiser of frame 0: writes the finished-looking image when ``writer`` wants."""
    if writer is None:
        return None

    def on_image(done: int, image: torch.Tensor) -> None:
        if writer.wants(done):
            writer.write(done, images.to_uint8(stylizer.finish(image.clamp(0, 1), content, 0)))
    return on_image


def _with_absolute_paths(cfg: StyleConfig) -> StyleConfig:
    """``cfg`` with its style image paths (and a weights file path) made absolute."""
    styles = tuple(str(Path(p).resolve()) for p in cfg.styles)
    weights = cfg.weights
    if weights not in WEIGHTS_NAMES:
        weights = str(Path(weights).resolve())
    mask = str(Path(cfg.mask).resolve()) if cfg.mask else cfg.mask
    if styles == cfg.styles and weights == cfg.weights and mask == cfg.mask:
        return cfg
    return replace(cfg, styles=styles, weights=weights, mask=mask)


def _note_resume(work: WorkDir, manifest: dict) -> None:
    """On a resume: record this run's output and options (what `videostyle resume` will use), and warn
    when package versions changed (frames made by other versions may differ in the last bits)."""
    fields = {k: manifest[k] for k in ("output", "run_options") if work.manifest.get(k) != manifest[k]}
    if fields:
        work.update_manifest(**fields)
    if not work.finished_count or work.manifest.get("frame_count") == work.finished_count:
        return  # nothing made earlier, or nothing left to make
    old, new = work.manifest.get("versions", {}), manifest["versions"]
    changed = [f"{name} {old[name]} -> {new[name]}" for name in sorted(new)
               if name in old and old[name] != new.get(name)]
    # Device and thread count change the float sums' order, so the frames' last bits (measured: up to
    # 47/255 a few frames later, through the warm start). Resuming elsewhere is a real use: warn only.
    old_machine, new_machine = work.manifest.get("machine"), manifest.get("machine", {})
    moved = [f"{name} {old_machine[name]} -> {new_machine[name]}" for name in ("device", "gpu", "threads")
             if isinstance(old_machine, dict) and name in old_machine and name in new_machine
             and old_machine[name] != new_machine[name]]
    if changed or moved:
        what = " and ".join(w for w, c in (("with other package versions", changed),
                                             ("on another device or thread count", moved)) if c)
        warnings.warn(f"resuming {work.finished_count} frames made {what} ({', '.join(changed + moved)}); "
                      f"the remaining frames may differ slightly from an uninterrupted run", stacklevel=2)


def _encode_journaled(work: WorkDir, info: VideoInfo, output: Path, out_size: tuple[int, int],
                      opts: RunOptions) -> None:
    """Encode the journaled frames (only these: a crash here redoes the encoding, never a frame)."""
    remove_partial_outputs(output)  # what an encode killed earlier left beside the output
    encoder = StreamingEncoder(work, info, output, out_size, crf=opts.crf, preset=opts.preset,
                               before_frame=_encode_kill_hook)
    if encoder.finish():  # no frame will be added: it encodes the journal and stops
        return
    if not isinstance(encoder.error, OutputError):
        raise encoder.error
    kept, shown = work.finished_count, str(work.path)
    raise OutputError(f"{encoder.error}; {kept} stylised frame{'' if kept == 1 else 's'} kept in {shown!r}: fix "
                      f"this, then rerun the same command (or `videostyle resume {shlex.quote(shown)}`) to "
                      f"encode them") from encoder.error


def resume_video(workdir: str | os.PathLike, *, device: str | None = None,
                 progress: ProgressFactory | None = None) -> RunSummary:
    """Resume the run whose work dir is ``workdir``, from its manifest alone."""
    manifest = WorkDir.read_manifest(workdir)
    try:
        cfg = StyleConfig.from_dict(manifest["config"])
        opts = RunOptions(**manifest["run_options"])
        source, output = manifest["source"], manifest["output"]
    except (KeyError, TypeError) as exc:
        raise ResumeError(f"work dir {str(workdir)!r} has an incomplete manifest (missing {exc}); "
                          f"rerun the original stylize command instead") from exc
    opts = replace(opts, workdir=str(workdir), device=device or opts.device)
    return stylize_video(source, output, cfg, opts, progress=progress)


def check_disk_space(workdir: Path, working: tuple[int, int], frame_count: int | None) -> None:
    """Refuse to start when the work dir's disk clearly cannot hold the frames.

    Estimate: a working-size PNG of a stylised frame takes about 2 bytes per pixel (measured ~1.5-2.5
    at compress level 1), plus 64 MiB of headroom for the encoded output. Frames already in the work
    dir (a resume) need no more space.
    """
    if not frame_count:
        return
    parent = workdir
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent  # the work dir (and its parents) will be created
    if not parent.is_dir():
        return  # WorkDir reports what is wrong with the path
    existing = len(list((workdir / "frames").glob("*.png"))) if workdir.is_dir() else 0
    need = max(0, frame_count - existing) * working[0] * working[1] * 2 + (64 << 20)
    free = shutil.disk_usage(parent).free
    if free < need:
        raise OutputError(f"not enough disk space for the work dir in {str(parent)!r}: about "
                          f"{need / 2**30:.1f} GiB needed for {frame_count} frames, {free / 2**30:.1f} GiB free; "
                          f"free space, lower --size or choose --workdir on another disk")


# libx264 refuses wider or taller pictures (measured with av 18.1: 16386x16 fails in avcodec_open2 with
# "Generic error in an external library"; 16384x16 encodes).
ENCODER_MAX_SIDE = 16384


def check_encodable(out_size: tuple[int, int], *, source_size: tuple[int, int]) -> None:
    """``OutputError`` when the H.264 encoder cannot take frames of ``out_size`` ``(W, H)`` px."""
    w, h = out_size
    if max(w, h) > ENCODER_MAX_SIDE:
        hint = ("; use --output-size working (encode at the working size, --size)"
                if out_size == source_size else "; lower --size")
        raise OutputError(f"video too large for the H.264 encoder: {w}x{h} px output, at most "
                          f"{ENCODER_MAX_SIDE} px per side{hint}")


def check_working_size(cfg: StyleConfig, working: tuple[int, int]) -> None:
    """``InputError`` when the working frames are too small for the deepest VGG layer used.

    Each pooling halves the picture (rounding down); a layer after ``p`` poolings needs a short edge of
    at least ``2**p`` px (relu5_1: 16 px), or its feature map is empty.
    """
    deepest, need = _deepest_layer(cfg)
    if min(working) < need:
        raise InputError(f"working size {working[0]}x{working[1]} px is too small for layer {deepest}, "
                         f"which needs a short edge of at least {need} px; raise --size")


def _deepest_layer(cfg: StyleConfig) -> tuple[str | None, int]:
    """The deepest VGG layer ``cfg`` uses and the short edge it needs, px (1 when no known layer)."""
    layers = [name for name, _ in (*cfg.content_layers, *cfg.style_layers) if name in LAYER_NAMES]
    if not layers:
        return None, 1  # VGGEncoder reports unknown names
    deepest = max(layers, key=LAYER_NAMES.index)
    poolings = sum(1 for name in LAYER_NAMES[:LAYER_NAMES.index(deepest)] if name.startswith("pool"))
    return deepest, 2 ** poolings


def check_image_shape(what: str, path: str | os.PathLike, size: tuple[int, int], long_edge: int,
                      cfg: StyleConfig) -> tuple[int, int]:
    """The size ``(W, H)`` an image of ``size`` px is scaled to for a long edge of ``long_edge`` px;
    ``InputError`` (one line) when that is too thin for the deepest layer used (a 100000x2 px image):
    torch would fail deep inside VGG ("Output size is too small")."""
    scaled = images.working_size(size[0], size[1], long_edge)
    deepest, need = _deepest_layer(cfg)
    if min(scaled) < need:
        ratio = max(1, long_edge // need)
        raise InputError(f"{what} {str(path)!r} is {size[0]}x{size[1]} px, scaled to {scaled[0]}x{scaled[1]} px: "
                         f"too thin for layer {deepest}, which needs a short edge of at least {need} px; "
                         f"expected an image at most {ratio} times as long as it is wide")
    return scaled


# Decoded source frames held at once: the prefetch queue (8), the flow worker's queue and history (4 +
# offsets), and a few being converted; the encoder's lookahead holds ~60 YUV 4:2:0 frames (1.5 B/px).
_SOURCE_FRAMES_HELD = 16
_ENCODER_FRAMES_HELD = 60
_BASE_MEMORY = 512 << 20  # torch, the VGG encoder and its activations at working size (typical)


def _available_memory() -> int | None:
    """Bytes of memory available to new work (Linux ``MemAvailable``), None where unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(source_size: tuple[int, int], out_size: tuple[int, int]) -> None:
    """``InputError`` when frames this large clearly cannot be decoded and encoded in the memory there is."""
    available = _available_memory()
    if available is None:
        return
    need = (_BASE_MEMORY + source_size[0] * source_size[1] * 3 * _SOURCE_FRAMES_HELD
            + int(out_size[0] * out_size[1] * 1.5 * _ENCODER_FRAMES_HELD))
    if need > available:
        raise InputError(f"video frames too large for the memory available: "
                         f"{source_size[0]}x{source_size[1]} px source, {out_size[0]}x{out_size[1]} px output "
                         f"need about {need / 2**30:.1f} GiB, {available / 2**30:.1f} GiB available; "
                         f"use --output-size working or a smaller source")


def _test_kill_point(point: str, index: int | None = None, *,
                     before_kill: Callable[[], None] | None = None) -> None:
    """TEST-ONLY fault injection: ``VIDEOSTYLE_TEST_KILL_AT=frame:N|journal:N|encode`` SIGKILLs this process.

    ``frame:N`` dies once frame N is optimised, before any of it is written (as if killed mid-frame;
    ``before_kill`` lets the frames handed to the writer land first, so the test knows what is kept),
    ``journal:N`` right after frame N was journaled, ``encode`` in the middle of encoding (after two
    frames went to the encoder, so a partial output file exists); ``tmp:N`` and ``renamed:N`` are
    inside :meth:`~videostyle.journal.WorkDir.write_frame`. Never set it outside tests
    (tests/test_resume.py, tests/test_faults.py).
    """
    wanted = os.environ.get("VIDEOSTYLE_TEST_KILL_AT")
    if wanted and wanted == (point if index is None else f"{point}:{index}"):
        if before_kill is not None:
            before_kill()
        os.kill(os.getpid(), signal.SIGKILL)


def _encode_kill_hook(index: int) -> None:
    """The encoder's test kill point: after two frames went to the encoder (a partial output exists)."""
    if index == 2:
        _test_kill_point("encode")


def _stylise_frames(info: VideoInfo, stylizer: Stylizer, work: WorkDir, working: tuple[int, int], *,
                    progress: ProgressFactory | None, verbose: bool, batch_size: int = 1,
                    first: int = 0, stop: int | None = None, seek: tuple[int, int] | None = None,
                    snapshots=None, on_journaled: Callable[[int, int, np.ndarray], None] | None = None) -> int:
    """Optimise and journal every frame not yet finished; returns how many were done in this call.

    ``snapshots``: a :class:`~videostyle.snapshots.SnapshotWriter` for frame 0 (``--save-every``).

    Frames are journaled ``batch_size`` at a time (and at the end): an interruption loses at most the
    unjournaled part of one batch. ``first``/``stop``: the chain covers source frames ``first ..
    stop-1`` (``stop=None``: to the end); frame ``first``, and each scene cut
    (:func:`videostyle.scenes.is_cut` on the flow's reliability and the colours), starts it afresh
    (``init_first``, ``iters_first``, octaves, no temporal terms). ``work`` indexes frames by source index: its ``finished_count`` is the next
    frame to make (a Ray segment passes a view of its own work dir, see :mod:`videostyle.distributed`).
    ``seek``: a keyframe ``(index, pts)`` at or before ``first`` to start decoding at (``iter_frames``).
    ``on_journaled(index, pts, rgb)``: called on the writer's thread, in index order, once each frame is
    journaled (the streaming encoder).
    """
    cfg = stylizer.cfg
    device = stylizer.device
    start = max(first, work.finished_count)
    lookback = max(cfg.flow_offsets) if cfg.needs_flow else 1
    # Decode from a little before the resume point: flows to earlier frames need their sources.
    first_decoded = max(first, start - lookback)
    # MKV and WebM state no frame count: duration x rate still gives the bar an ETA.
    bar = progress(total=estimated_frame_count(info), initial=start) if progress else None
    done = 0
    pending: list[tuple[int, int, np.ndarray]] = []  # finished frames not yet handed to the writer
    previous: dict[int, torch.Tensor] = {}  # saved outputs of recent frames, as read back from disk
    for k in range(1, lookback + 1):
        if start - k >= first:
            previous[start - k] = stylizer.to_optimised(images.to_tensor(work.read_frame(start - k), device))

    def after_write(index: int, pts: int, rgb: np.ndarray) -> None:
        if on_journaled is not None:
            on_journaled(index, pts, rgb)
        _test_kill_point("journal", index)

    writer = FrameWriter(work, after_write=after_write)
    with writer, FramePrefetcher(iter_frames(info, start=first_decoded, seek=seek)) as frames:
        records = _frame_records(frames, cfg, working)
        try:
            last_histogram = None  # of the frame before, for the scene cut test
            for index, pts, content_rgb, flows, masks in records:
                histogram = scenes.colour_histogram(content_rgb) if cfg.needs_flow else None
                cut = (index > first and last_histogram is not None and 1 in masks
                       and scenes.is_cut(float(masks[1].mean()),
                                         scenes.histogram_distance(last_histogram, histogram)))
                last_histogram = histogram
                if cut:  # a new shot: a warm start from the other shot would leave its ghost here
                    for k in [k for k in previous if k < index]:
                        del previous[k]
                if index < start:
                    continue
                if stop is not None and index >= stop:
                    break
                if cut:
                    log.info("frame %d: scene cut, starting afresh", index)
                fresh = index == first or cut
                content = images.to_tensor(content_rgb, device)
                target = stylizer.to_optimised(content)
                init, temporal = _init_and_temporal(cfg, index, target, previous, flows, masks,
                                                    frame_generator(cfg.seed, index))
                iterations = cfg.iters_first if fresh else cfg.iters
                with PHASES.measure("optimise"):  # to_uint8 waits for the device: its work counts here
                    result = stylizer.stylise(target, init, iterations=iterations, temporal=temporal,
                                              warm_started=not fresh and cfg.init.startswith("prev"),
                                              evaluate_result=False,
                                              on_image=_snapshot_hook(snapshots, stylizer, content)
                                              if index == 0 else None)
                    _test_kill_point("frame", index, before_kill=writer.flush)
                    rgb = images.to_uint8(stylizer.finish(result.image, content, index))
                pending.append((index, pts, rgb))
                if len(pending) >= batch_size:
                    writer.submit(pending)
                    pending = []
                # The 8-bit frame as saved (coloured, composited), as a resume reads it back.
                previous[index] = stylizer.to_optimised(images.to_tensor(rgb, device))
                previous.pop(index - lookback, None)
                done += 1
                if verbose:
                    log.info("frame %d: %s (%d it)", index,
                             " ".join(f"{k}={v:.4g}" for k, v in result.losses.items()), result.iterations)
                if bar is not None:
                    bar.set_postfix_str(f"loss {result.losses['total']:.3g}")
                    bar.update(1)
            writer.submit(pending)
            writer.flush()
        except KeyboardInterrupt:
            # Ctrl-C / SIGTERM: the frame in progress is dropped; the finished frames of a partial batch
            # are complete, so they are kept (the writer's context waits for them).
            writer.submit(pending)
            raise
        finally:
            if hasattr(records, "close"):
                records.close()
            if bar is not None:
                bar.close()
    if work.finished_count == 0:
        raise InputError(f"no frames could be decoded from {str(info.path)!r}")
    return done


def frame_generator(seed: int, index: int) -> torch.Generator:
    """The random generator for frame ``index`` (noise init): seeded per frame, so a resumed run draws
    the same noise as an uninterrupted one. Frame 0 uses ``seed`` itself, as :func:`stylize_image`."""
    if index == 0:
        return torch.Generator().manual_seed(seed)
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, index]).generate_state(1)[0]))


def _frame_records(frames, cfg: StyleConfig, working: tuple[int, int]) -> Iterator:
    """Yields ``(index, pts, content_rgb (H,W,3) uint8 at working size, flows, masks)``.

    ``flows[k]`` is the backward flow t -> t-k ``(H, W, 2)`` px at the working size and ``masks[k]``
    its ``(H, W)`` reliability; both empty when the config needs no flow.
    """
    if not cfg.needs_flow:
        for frame in frames:
            yield frame.index, frame.pts, images.resize_rgb(frame.rgb, working), {}, {}
        return
    estimator = FlowEstimator(cfg.flow, device="cpu" if cfg.flow in ("dis", "farneback") else "auto")
    with FlowWorker(frames, estimator, offsets=cfg.flow_offsets, resize_to=working) as worker:
        for rec in worker:
            yield rec.index, rec.pts, images.resize_rgb(rec.rgb, working), rec.back, rec.mask


def _init_and_temporal(cfg: StyleConfig, index: int, content: torch.Tensor,
                       previous: dict[int, torch.Tensor], flows: dict, masks: dict,
                       generator: torch.Generator) -> tuple[torch.Tensor, tuple[TemporalTerm, ...]]:
    """Initial image and temporal terms for frame ``index`` (Ruder et al.)."""
    if index == 0 or (index - 1) not in previous:
        return initial_image(cfg.init_first, content=content, generator=generator), ()
    warped, mask_t = {}, {}
    if flows:
        for k, mask in long_term_masks({k: masks[k] for k in flows if index - k in previous}).items():
            warped[k] = warp_previous(previous[index - k], flows[k])
            mask_t[k] = mask_tensor(mask, content.device)
    init = initial_image(cfg.init, content=content, previous=previous[index - 1],
                         warped_previous=warped.get(1),
                         mask=mask_tensor(warm_start_mask(cfg.init, flows[1], masks[1]), content.device)
                         if cfg.init.startswith("prev-warped") and 1 in flows else None,
                         generator=generator)
    temporal = ()
    if cfg.temporal_weight > 0:
        temporal = tuple(TemporalTerm(warped[k], mask_t[k], cfg.temporal_weight) for k in sorted(warped))
    return init, temporal


def stylize_image(source: str | os.PathLike, output: str | os.PathLike, cfg: StyleConfig,
                  opts: RunOptions = RunOptions(), *, refine_iters: int = 20,
                  progress: ProgressFactory | None = None) -> dict[str, float]:
    """Stylise one image; writes a PNG (or any format Pillow knows by extension) at the source's size
    (``opts.output_size == "source"``: the working-size result refined at 2x steps by ``refine_iters``
    iterations each, :mod:`videostyle.upscale`) or at the working size.

    ``progress``: a ``tqdm``-like factory called as ``progress(total=iterations)``; the bar gets
    ``update(1)`` per iteration and ``close()``. Returns the working-size result's final loss terms.
    """
    inputs = [("input image", source), *style_inputs(cfg)]
    output = check_image_output(output, inputs=inputs)
    check_snapshots_not_inputs(output, opts.save_every, inputs)
    rgb = images.load_image(source)
    check_image_shape("image", source, (rgb.shape[1], rgb.shape[0]), cfg.size, cfg)
    upscale = refine_iters if opts.output_size == "source" else None
    bar = progress(total=still_iterations(rgb, cfg, refine_iters=upscale)) if progress else None
    try:
        out, losses = stylise_still(rgb, cfg, device=pick_device(opts.device),
                                    snapshots=_snapshot_writer(output, opts.save_every), precision=opts.precision,
                                    tile=opts.tile, max_memory=opts.max_memory, refine_iters=upscale,
                                    on_step=(lambda: bar.update(1)) if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    images.save_image_atomic(out, output)
    return losses


def still_iterations(rgb: np.ndarray, cfg: StyleConfig, *, refine_iters: int | None = None) -> int:
    """Optimiser iterations :func:`stylise_still` runs on ``rgb`` ``(H, W, 3)``: ``iters_first`` at each
    octave, then (``refine_iters`` not None) those of the upscale to the source size."""
    from .optimise import octave_sizes
    from .upscale import refine_iterations

    working = images.working_size(rgb.shape[1], rgb.shape[0], cfg.size)
    octaves = len(octave_sizes(working[1], working[0], cfg.octaves)) if cfg.octaves > 1 else 1
    total = octaves * cfg.iters_first
    if refine_iters is not None:
        total += refine_iterations(working, (rgb.shape[1], rgb.shape[0]), refine_iters)
    return total


def check_image_output(output: str | os.PathLike, *, inputs=()) -> Path:
    """``OutputError`` when an image cannot be written to ``output`` (missing dir, unknown extension, or
    it is one of ``inputs``, ``(what, path)`` pairs: see :func:`videostyle.paths.check_not_an_input`)."""
    output = Path(output)
    check_not_an_input(output, inputs)
    if not output.parent.is_dir():
        raise OutputError(f"output directory does not exist: {str(output.parent)!r}")
    if output.suffix.lower() not in Image.registered_extensions():
        raise OutputError(f"unsupported image extension {output.suffix!r} for {str(output)!r}; "
                          f"use .png or .jpg")
    return output


def stylise_still(rgb: np.ndarray, cfg: StyleConfig, *, device: torch.device, snapshots=None,
                  precision: str = "fp32", tile: int | None = None, max_memory: int | None = None,
                  refine_iters: int | None = None,
                  on_step: Callable[[], None] | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """Stylise one picture ``(H, W, 3)`` uint8 alone, with the first-frame settings.

    Returns the result at the working size ``(h, w, 3)`` uint8 (with ``refine_iters`` not None: at
    ``rgb``'s size, :func:`videostyle.upscale.upscale_still`, that many iterations per 2x step) and the
    working-size result's final loss terms (floats).
    ``snapshots``: a :class:`~videostyle.snapshots.SnapshotWriter` (``--save-every``) or None.
    ``on_step()``: called after every optimiser iteration (a progress bar).
    """
    working = images.working_size(rgb.shape[1], rgb.shape[0], cfg.size)
    content = images.to_tensor(images.resize_rgb(rgb, working), device)
    stylizer = Stylizer(cfg, device=device, working_size=working, colour_reference=content,
                        precision=precision)
    stylizer.plan_tiles(working, tile=tile, max_memory=max_memory)
    stylizer.on_step = on_step
    target = stylizer.to_optimised(content)
    init = initial_image(cfg.init_first, content=target, generator=frame_generator(cfg.seed, 0))
    result = stylizer.stylise(target, init, iterations=cfg.iters_first,
                              on_image=_snapshot_hook(snapshots, stylizer, content))
    out = images.to_uint8(stylizer.finish(result.image, content, 0))
    if refine_iters is not None and out.shape[:2] != rgb.shape[:2]:
        from .upscale import upscale_still
        out = upscale_still(stylizer, rgb, out, iterations=refine_iters, tile=tile, max_memory=max_memory)
    return out, result.losses
