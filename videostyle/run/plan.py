"""A video run as checked before any work: the plan, the manifest, the work dir it opens.

Everything here runs before the first frame (the "before any work" guarantee: a bad setting, a missing
file, too little disk or memory are refused with no work dir left behind), for a single-process and a
``--ray`` run alike. See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from videostyle import __version__, images
from videostyle.config import RunOptions, StyleConfig
from videostyle.errors import InputError, OutputError
from videostyle.faults import KillPoint, never
from videostyle.media.decode import iter_frames
from videostyle.media.encode import check_encoder_options, check_output_path
from videostyle.media.probe import VideoInfo, cut_seconds, dropped_streams_note, probe_video, with_cut
from videostyle.model import memory
from videostyle.model.features import WEIGHTS_NAMES
from videostyle.paths import check_not_an_input, style_inputs
from videostyle.step import check_working_size
from videostyle.store.snapshots import check_snapshots_not_inputs
from videostyle.store.workdir import WorkDir, file_fingerprint, frames_on_disk


@dataclass(frozen=True)
class RunSummary:
    output: Path
    frames: int
    resumed_from: int
    seconds_per_frame: float
    weights_id: str
    workdir: Path


ProgressFactory = Callable[..., object]


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
    from videostyle.media.decode import estimate_frame_count
    return replace(info, frame_count_estimate=estimate_frame_count(info))


def note_dropped_streams(info: VideoInfo) -> None:
    """Say once (stderr) which of the source's streams the output leaves out (GoPro GPMF, timecode...)."""
    note = dropped_streams_note(info)
    if note:
        print(f"videostyle: note: {note}", file=sys.stderr)


def default_workdir(output: Path) -> Path:
    return output.with_name(output.name + ".videostyle-work")


def open_run_workdir(plan: RunPlan, weights_id: str, opts: RunOptions, *,
                     device: torch.device | str | None = None, threads: int | None = None,
                     kill_point: KillPoint = never) -> tuple[WorkDir, dict]:
    """Create or resume the run's work dir (refused when it belongs to another run, or in use by another
    process); returns it, locked (use it as a context manager), and this run's manifest (on a resume,
    the work dir keeps the manifest it was made with). ``device``/``threads``: where the frames are
    made (default: ``opts.device``, this process's torch threads), recorded to warn on a resume
    elsewhere."""
    run_opts = replace(opts, workdir=str(plan.workdir.resolve()), restart=False)
    manifest = build_manifest(plan.cfg, plan.info, weights_id, plan.working, output=plan.output, opts=run_opts)
    manifest["machine"] = machine_record(device, threads)
    work = WorkDir.open(plan.workdir, manifest, restart=opts.restart, kill_point=kill_point)
    try:
        _note_resume(work, manifest)
    except BaseException:
        work.close()
        raise
    return work, manifest


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
        "precision": opts.precision,  # changes pixels: a resume must match it (workdir._MUST_MATCH)
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


def first_frame(info: VideoInfo, working: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Frame 0 of the video at the working size, ``(1, 3, H, W)`` in [0, 1]."""
    frames = iter_frames(info)
    try:
        return images.to_tensor(images.resize_rgb(next(frames).rgb, working), device)
    finally:
        frames.close()


def snapshot_writer(output: Path, every: int):
    """``--save-every``: a :class:`~videostyle.store.snapshots.SnapshotWriter`, or None when off."""
    if every <= 0:
        return None
    from videostyle.store.snapshots import SnapshotWriter
    return SnapshotWriter(output, every)


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
    existing = frames_on_disk(workdir)
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


# Decoded source frames held at once: the prefetch queue (8), the flow worker's queue and history (4 +
# offsets), and a few being converted; the encoder's lookahead holds ~60 YUV 4:2:0 frames (1.5 B/px).
_SOURCE_FRAMES_HELD = 16
_ENCODER_FRAMES_HELD = 60
# DIS's pyramids, the flow fields, the warped frames and masks, the frame writer's PNG: calibrated on
# one measurement (docs/BENCHMARKS.md, "Tiled optimisation": a 1080x1920 run peaked 80 MiB above its
# plan without this term).
_FLOW_BYTES_PER_PX = 48
_BASE_MEMORY = 512 << 20  # torch, the VGG encoder and its activations at working size (typical)


def pipeline_memory(source_size: tuple[int, int], out_size: tuple[int, int],
                    working: tuple[int, int] | None = None) -> int:
    """Bytes a video run holds beside the frame's optimisation: decoded source frames of ``source_size``
    ``(W, H)``, the encoder's lookahead at ``out_size``, and the optical flow's work at ``working``."""
    flow = working[0] * working[1] * _FLOW_BYTES_PER_PX if working else 0
    return (source_size[0] * source_size[1] * 3 * _SOURCE_FRAMES_HELD
            + int(out_size[0] * out_size[1] * 1.5 * _ENCODER_FRAMES_HELD) + flow)


def check_memory(source_size: tuple[int, int], out_size: tuple[int, int]) -> None:
    """``InputError`` when frames this large clearly cannot be decoded and encoded in the memory there is."""
    available = memory.available_memory()
    if available is None:
        return
    need = _BASE_MEMORY + pipeline_memory(source_size, out_size)
    if need > available:
        raise InputError(f"video frames too large for the memory available: "
                         f"{source_size[0]}x{source_size[1]} px source, {out_size[0]}x{out_size[1]} px output "
                         f"need about {need / 2**30:.1f} GiB, {available / 2**30:.1f} GiB available; "
                         f"use --output-size working or a smaller source")


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
