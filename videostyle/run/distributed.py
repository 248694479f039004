"""Many workers: a video cut into overlapping segments, each a Ray task running the normal frame chain.

A Ray run's work dir is a normal :class:`~videostyle.store.workdir.WorkDir` (its manifest makes
``videostyle resume WORKDIR`` work, with the segments planned; its own journal stays empty), holding one
work dir per segment (:func:`~videostyle.store.workdir.segment_dir`, named ``FFFFFF-SSSSSS`` by the
source frames it stylises, ``end`` for the last): its journal indexes them from 0, its manifest is the
parent's plus the range, and it logs each task attempt (pid, host, resumed from).

Convention:
    Frame indices are source indices (0-based, decode order) unless named ``local``. Segment ``i`` owns
    frames ``start .. stop-1``; it stylises from ``first = start - K`` (K = overlap), the first K being
    a run-in that overlaps the end of segment ``i-1``. Segment directories are named by the frames they
    stylise, so a rerun with another ``--segment-frames``/``--segment-overlap`` never reuses a segment
    that would hold other frames. Frames are ``(H, W, 3)`` uint8 RGB at the working size.

Seams: the K overlap frames are cross-faded when the driver encodes, from segment ``i-1``'s frame to
segment ``i``'s (weight of the new segment ``(j+1)/(K+1)`` for the j-th overlap frame), so a change
of style phase at a seam is spread over K+1 frame steps. This needs no ordering between tasks: every
segment runs in parallel. The driver encodes in source order with source pts and the source's audio
(:func:`videostyle.media.encode.encode_video`), streaming: frames go to the encoder as soon as the
segment that owns them and the next one (for the cross-fade) are journaled.

Scene cuts (``RunOptions.scene_cuts``, :mod:`videostyle.motion.scenes`): a segment also starts at each cut, with no
run-in and so no cross-fade (the chain restarts there anyway); the seam metric skips the pair across it.
The cuts are recorded in the manifest (``scene_cuts``; None when off) and reused by a resume.

Retries: a task whose worker dies (node lost, OOM, SIGKILL) is retried by Ray (``max_retries``); the
retry reopens the segment's work dir, which keeps every journaled frame (hash-checked), and resumes
after them. A rerun of the same command, or ``videostyle resume WORKDIR``, reruns every segment task;
a finished segment returns at once.

Ray is imported lazily: the package works without the ``ray`` extra.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from videostyle import faults, images
from videostyle.config import RunOptions, StyleConfig
from videostyle.errors import InputError, OutputError, ResumeError, VideoStyleError
from videostyle.media.decode import SeekError, keyframes
from videostyle.media.probe import VideoInfo, probe_video
from videostyle.model.metrics import temporal_warping_error
from videostyle.run.chain import run_chain
from videostyle.run.plan import (RunSummary, check_disk_space, estimated_frame_count, first_frame,
                                 open_run_workdir, plan_run)
from videostyle.step import Stylizer, pick_device
from videostyle.store.workdir import (OffsetFrames, WorkDir, file_fingerprint, has_manifest, journaled_count,
                                      log_attempt, segment_dir)

log = logging.getLogger(__name__)

# A worker lost mid-segment (node gone, OOM, SIGKILL) is retried this often; it resumes from its journal.
MAX_RETRIES = 3
# Seconds between progress updates while the driver waits for a segment.
_POLL_S = 1.0
RAY_MISSING = "--ray needs Ray: pip install 'videostyle[ray]'"


@dataclass(frozen=True)
class Segment:
    """Segment ``index`` stylises source frames ``first .. stop-1`` and owns ``start .. stop-1``.

    ``stop=None``: to the end of the video (the last segment takes whatever the frame count estimate
    missed). ``start - first`` is the run-in (overlap with the previous segment), 0 for the first.
    ``cut``: it starts at a scene cut (:mod:`videostyle.motion.scenes`), so it has no run-in and no seam.
    """

    index: int
    first: int
    start: int
    stop: int | None
    cut: bool = False

    @property
    def overlap(self) -> int:
        return self.start - self.first

    @property
    def name(self) -> str:
        """Directory name: the frames it stylises, ``FFFFFF-SSSSSS`` or ``FFFFFF-end``."""
        return f"{self.first:06d}-{'end' if self.stop is None else f'{self.stop:06d}'}"

    def to_dict(self) -> dict:
        return {"index": self.index, "first": self.first, "start": self.start, "stop": self.stop, "cut": self.cut}


def plan_segments(frame_count: int | None, *, length: int, overlap: int, cuts: Sequence[int] = ()) -> list[Segment]:
    """Cut ``frame_count`` frames into segments owning ``length`` frames, each after the first with a
    run-in of ``overlap`` frames before its start.

    ``cuts``: scene cuts (source frames, :func:`videostyle.motion.scenes.detect_scene_cuts`); each starts a
    segment with no run-in (the chain restarts there anyway: nothing to cross-fade). Within a scene the
    segments are as without cuts. The last segment of a scene absorbs a remainder of at most ``overlap``
    frames (a segment that short would cost more in run-in than it saves), never across a cut; the last
    segment is open-ended (``stop=None``). ``frame_count=None`` (unknown) gives one open-ended segment;
    cuts outside ``1 .. frame_count-1`` are ignored.

    Raises:
        ValueError: ``length < 1``, ``overlap < 0`` or ``overlap > length``.
    """
    if length < 1:
        raise ValueError(f"--segment-frames must be at least 1, got {length}")
    if overlap < 0 or overlap > length:
        raise ValueError(f"--segment-overlap must be between 0 and --segment-frames ({length}), got {overlap}")
    if not frame_count:
        return [Segment(0, 0, 0, None)]
    bounds = [0, *sorted({c for c in cuts if 0 < c < frame_count}), frame_count]
    starts: list[tuple[int, bool]] = []  # (start, at a cut)
    for a, b in zip(bounds, bounds[1:]):
        scene = list(range(a, b, length))
        if len(scene) > 1 and b - scene[-1] <= overlap:
            scene.pop()  # fold a short tail into the previous segment of this scene
        starts += [(s, s == a and a > 0) for s in scene]
    return [Segment(i, s if cut else max(0, s - overlap), s, starts[i + 1][0] if i + 1 < len(starts) else None, cut)
            for i, (s, cut) in enumerate(starts)]


def seek_point(keys: list[tuple[int, int]] | None, first: int) -> tuple[int, int] | None:
    """The last keyframe ``(index, pts)`` at or before frame ``first`` (None: decode from the start)."""
    best = None
    for index, pts in keys or ():
        if index > first:
            break
        best = (index, pts)
    return best if best is not None and best[0] > 0 else None


def crossfade(owner: np.ndarray, nxt: np.ndarray, *, position: int, overlap: int) -> np.ndarray:
    """Frame ``position`` (0-based) of an ``overlap``-frame seam: ``(1-a) owner + a nxt``,
    ``a = (position+1)/(overlap+1)``; both ``(H, W, 3)`` uint8, result rounded to uint8."""
    a = (position + 1) / (overlap + 1)
    mixed = (1.0 - a) * owner.astype(np.float32) + a * nxt.astype(np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


# --- the seam metric ------------------------------------------------------------------------------

@dataclass(frozen=True)
class SeamReport:
    """Temporal warping error (:func:`videostyle.model.metrics.temporal_warping_error`) at seams vs inside.

    ``seam_error``: mean E_t over the frame pairs that cross a seam (the K+1 steps into, through and out
    of each cross-fade); ``inside_error``: mean over pairs inside segments (up to ``2(K+1)`` per segment,
    taken from the middle of what it owns). ``worst_seam``: the largest mean over one seam's pairs.
    None where there were no such pairs (one segment). Measured at the working size (flows on the source
    resized to it), on the frames as encoded before H.264. ``cuts``: segment boundaries at scene cuts,
    not measured (the error across a cut says nothing: no pixel warps from one shot to the next).
    """

    seams: int
    seam_pairs: int
    inside_pairs: int
    seam_error: float | None
    inside_error: float | None
    worst_seam: float | None
    cuts: int = 0

    @property
    def ratio(self) -> float | None:
        if self.seam_error is None or not self.inside_error:
            return None
        return self.seam_error / self.inside_error

    def describe(self) -> str:
        cuts = f" ({self.cuts} scene cut{'' if self.cuts == 1 else 's'} not counted)" if self.cuts else ""
        if self.seam_error is None:
            inside = f"{self.inside_error:.3g}" if self.inside_error is not None else "n/a"
            return f"seams: none{cuts or ' (one segment)'}; temporal error inside {inside}"
        ratio = f"{self.ratio:.2f}x" if self.ratio is not None else "n/a"
        return (f"seams: temporal error {self.seam_error:.3g} over {self.seams} seam"
                f"{'' if self.seams == 1 else 's'}{cuts} ({self.seam_pairs} frame pairs, worst {self.worst_seam:.3g}) "
                f"vs {self.inside_error:.3g} inside segments ({self.inside_pairs} pairs): {ratio}")

    def to_dict(self) -> dict:
        return {**self.__dict__, "ratio": self.ratio}


def seam_pairs(segments: Sequence[Segment], frame_count: int) -> tuple[dict[int, int], set[int]]:
    """Which frame pairs ``(t-1, t)`` the seam metric measures, by ``t``.

    Returns ``({t: seam number}, {t inside a segment})``: seam ``i`` (between segments ``i-1`` and ``i``)
    covers ``t = first_i .. start_i``; inside pairs are up to ``2(K+1)`` consecutive ``t`` from the middle
    of each segment's frames that are neither cross-faded nor next to a seam. A segment that starts at a
    scene cut makes no seam, and the pair across the cut is in neither set.
    """
    seams: dict[int, int] = {}
    inside: set[int] = set()
    for seg in segments:
        if seg.index > 0 and not seg.cut:
            for t in range(max(1, seg.first), min(seg.start, frame_count - 1) + 1):
                seams[t] = seg.index
    for i, seg in enumerate(segments):
        end = segments[i + 1].first if i + 1 < len(segments) else frame_count
        lo, hi = seg.start + 1, min(end, frame_count)  # t in [lo, hi): both frames pure, no seam step
        want = 2 * (max(seg.overlap, segments[i + 1].overlap if i + 1 < len(segments) else 0) + 1)
        if hi - lo > want:
            lo = lo + (hi - lo - want) // 2
            hi = lo + want
        inside.update(t for t in range(max(lo, 1), hi) if t not in seams)
    return seams, inside


class SeamMeter:
    """Collects E_t for the pairs :func:`seam_pairs` picks while frames stream past in order.

    ``add(t, stylised, source)`` with ``stylised`` ``(h, w, 3)`` uint8 (working size) and ``source``
    ``(h, w, 3)`` uint8 resized to it; holds only the previous frame.
    """

    def __init__(self, segments: Sequence[Segment], frame_count: int):
        self._seams, self._inside = seam_pairs(segments, frame_count)
        self._cuts = sum(1 for s in segments if s.cut and s.start < frame_count)
        self._prev: tuple[int, np.ndarray, np.ndarray] | None = None
        self._seam_errors: dict[int, list[float]] = {}
        self._inside_errors: list[float] = []

    def wants(self, t: int) -> bool:
        return t in self._seams or t in self._inside or (t + 1) in self._seams or (t + 1) in self._inside

    def add(self, t: int, stylised: np.ndarray, source: np.ndarray) -> None:
        prev, self._prev = self._prev, (t, stylised, source)
        if prev is None or prev[0] != t - 1 or not (t in self._seams or t in self._inside):
            return
        error = float(temporal_warping_error([prev[1], stylised], [prev[2], source])[0])
        if not np.isfinite(error):
            return  # no reliable pixel: says nothing about the seam
        if t in self._seams:
            self._seam_errors.setdefault(self._seams[t], []).append(error)
        else:
            self._inside_errors.append(error)

    def report(self) -> SeamReport:
        seam_all = [e for errs in self._seam_errors.values() for e in errs]
        return SeamReport(
            seams=len(self._seam_errors), seam_pairs=len(seam_all), inside_pairs=len(self._inside_errors),
            seam_error=float(np.mean(seam_all)) if seam_all else None,
            inside_error=float(np.mean(self._inside_errors)) if self._inside_errors else None,
            worst_seam=max((float(np.mean(e)) for e in self._seam_errors.values()), default=None),
            cuts=self._cuts)


# --- the worker side ------------------------------------------------------------------------------

@dataclass(frozen=True)
class SegmentJob:
    """Everything a segment task needs; paths absolute and on a filesystem every node sees."""

    source: str
    segment: Segment
    directory: str
    manifest: dict
    cfg: StyleConfig
    working: tuple[int, int]
    device: str
    threads: int
    batch_size: int
    weights_id: str
    seek: tuple[int, int] | None = None  # the keyframe (index, pts) to decode from, at or before first
    kill_at: str | None = None  # TEST-ONLY, see _armed_test_kill
    precision: str = "fp32"  # RunOptions.precision


@dataclass(frozen=True)
class SegmentResult:
    """``pts`` of the journaled frames ``first, first+1, ...``; ``stylised``: frames made by this attempt."""

    index: int
    pts: tuple[int, ...]
    stylised: int
    resumed_from: int


def _is_complete(work: WorkDir, seg: Segment) -> bool:
    """Finished: every frame of the range journaled, or the chain ran to the end of the video."""
    if seg.stop is not None and work.finished_count >= seg.stop - seg.first:
        return True
    return work.manifest.get("frame_count") == work.finished_count


def run_segment(job: SegmentJob) -> SegmentResult:
    """Stylise one segment into its own work dir (resuming it); runs in a Ray worker process."""
    for what, path in (("source video", job.source), ("work dir", str(Path(job.directory).parent.parent)),
                       *(("style image", p) for p in job.cfg.styles)):
        if not os.path.exists(path):
            raise InputError(f"worker on {socket.gethostname()} cannot see the {what} {path!r}: --ray needs "
                             f"paths on a filesystem shared by every node")
    with WorkDir.open(job.directory, job.manifest) as work:  # locked while this attempt runs
        return _run_segment_in(job, work)


def _run_segment_in(job: SegmentJob, work: WorkDir) -> SegmentResult:
    import torch

    seg = job.segment
    resumed_from = work.finished_count
    done = 0
    if not _is_complete(work, seg):
        device = pick_device(job.device)
        if device.type == "cpu":
            torch.set_num_threads(job.threads)  # the CPUs Ray gave this task, no more
        info = probe_video(job.source)
        # --preserve-colors matches the style's luminance to frame 0, as a single-process run does.
        reference = first_frame(info, tuple(job.working), device) if job.cfg.preserve_colors else None
        stylizer = Stylizer(job.cfg, device=device, working_size=tuple(job.working),
                                     colour_reference=reference, precision=job.precision)
        if stylizer.weights.weights_id != job.weights_id:
            raise InputError(f"worker on {socket.gethostname()} resolved VGG-19 weights "
                             f"{stylizer.weights.weights_id}, the driver {job.weights_id}: install the same "
                             f"weights on every node (or pass --weights explicitly)")
        _log_attempt(work, "start", resumed_from=resumed_from, seek=job.seek)
        frames = OffsetFrames(work, seg.first)
        options = dict(progress=None, verbose=False, batch_size=job.batch_size, first=seg.first, stop=seg.stop)
        with _armed_test_kill(job) as kill_point:
            try:
                done = run_chain(info, stylizer, frames, tuple(job.working), seek=job.seek, kill_point=kill_point,
                                 **options)
            except SeekError as exc:  # the file does not seek exactly: decode from its start (slower)
                _log_attempt(work, "seek-failed", reason=str(exc))
                done = run_chain(info, stylizer, frames, tuple(job.working), kill_point=kill_point, **options)
        work.update_manifest(frame_count=work.finished_count)
        _log_attempt(work, "done", stylised=done)
    pts = tuple(work.entries[j].pts for j in range(work.finished_count))
    return SegmentResult(seg.index, pts, done, resumed_from)


def _log_attempt(work: WorkDir, event: str, **fields) -> None:
    log_attempt(work, event=event, pid=os.getpid(), host=socket.gethostname(), time=time.time(), **fields)


@contextmanager
def _armed_test_kill(job: SegmentJob):
    """TEST-ONLY: ``VIDEOSTYLE_TEST_KILL_AT=segment:S:frame:N`` (or ``segment:S:journal:N``) SIGKILLs the
    worker of segment S at source frame N (:mod:`videostyle.faults`), once: a marker file in the segment's
    dir disarms it for Ray's retry. The driver passes the variable to the task (workers do not share the
    driver's environment). Yields the kill point to hand down (:func:`videostyle.faults.never` when
    unarmed)."""
    parts = (job.kill_at or "").split(":")
    marker = Path(job.directory) / "test-kill-fired"
    armed = (len(parts) == 4 and parts[0] == "segment" and parts[1] == str(job.segment.index)
             and not marker.exists())
    if not armed:
        yield faults.never
        return
    marker.touch()
    before = os.environ.get("VIDEOSTYLE_TEST_KILL_AT")
    os.environ["VIDEOSTYLE_TEST_KILL_AT"] = f"{parts[2]}:{parts[3]}"
    try:
        yield faults.kill_point
    finally:
        if before is None:
            os.environ.pop("VIDEOSTYLE_TEST_KILL_AT", None)
        else:
            os.environ["VIDEOSTYLE_TEST_KILL_AT"] = before


# --- the driver -----------------------------------------------------------------------------------

def import_ray():
    """The ``ray`` module; ``InputError`` (one line, how to install it) when it is missing."""
    try:
        import ray
    except ImportError:
        raise InputError(RAY_MISSING) from None
    return ray


def _connect(ray, address: str) -> bool:
    """Connect to Ray (``local``: start one here, or join ``RAY_ADDRESS``); True when this call did it.

    Ray's own logs stay in its session dir: only errors reach the terminal.
    """
    if ray.is_initialized():
        return False  # the caller's Ray (tests, a notebook): use it, leave it running
    kwargs = dict(log_to_driver=False, logging_level=logging.ERROR)
    # ray.init installs its own SIGTERM handler (it dumps a stack trace and exits): keep ours, which stops
    # like Ctrl-C (tasks cancelled, journals kept, the resume command printed).
    main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        if address == "local":
            ray.init(include_dashboard=False, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise InputError(f"cannot start or reach Ray at {address!r} ({reason})") from exc
    finally:
        if sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
    return True


def _task_resources(ray, device: str, cpus: int) -> dict:
    """One GPU per segment task when the workers are to use CUDA, else ``cpus`` CPUs."""
    wants_gpu = device.startswith("cuda") or (device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
    return {"num_gpus": 1, "num_cpus": 1} if wants_gpu else {"num_cpus": cpus}


def stylize_video_ray(source, output, cfg: StyleConfig, opts: RunOptions, *, progress=None,
                      kill_at: str | None = None):
    """:func:`videostyle.run.api.stylize_video` with segments as Ray tasks (``opts.ray`` set).

    Same checks before any work, same work dir semantics (rerun or ``videostyle resume`` skips finished
    frames), same output (frame count, pts, audio). Returns a :class:`RaySummary`.
    """
    ray = import_ray()
    from videostyle.model.features import resolve_weights

    plan = plan_run(source, output, cfg, opts)
    cfg, info, output, working, out_size = plan.cfg, plan.info, plan.output, plan.working, plan.out_size
    if opts.ray_cpus < 1:
        raise ValueError(f"--ray-cpus must be at least 1, got {opts.ray_cpus}")
    if cfg.passes > 1:
        raise InputError("--passes needs the whole video in one process: run it without --ray")
    estimate = estimated_frame_count(info)
    workdir = plan.workdir.resolve()  # the tasks get absolute paths
    cuts = _scene_cuts(info, workdir, opts)
    segments = plan_segments(estimate, length=opts.segment_frames, overlap=opts.segment_overlap, cuts=cuts)
    planned = None if estimate is None else estimate + sum(s.overlap for s in segments)
    if planned is not None:
        planned -= sum(journaled_count(segment_dir(workdir, s.name)) for s in segments)
    check_disk_space(workdir, working, planned)
    weights_id = resolve_weights(cfg.weights, cfg.model).weights_id  # the workers must resolve the same
    work, manifest = open_run_workdir(replace(plan, workdir=workdir), weights_id, opts,
                                               device=opts.device, threads=opts.ray_cpus)
    with work:  # locked for the whole run; a run stopped before any segment started leaves no work dir
        work.update_manifest(segments=[s.to_dict() for s in segments], scene_cuts=cuts if opts.scene_cuts else None)
        resumed_from = sum(journaled_count(segment_dir(workdir, s.name)) for s in segments)

        started = _connect(ray, opts.ray)
        t0 = time.monotonic()
        try:
            resources = _task_resources(ray, opts.device, opts.ray_cpus)
            task = ray.remote(run_segment).options(max_retries=MAX_RETRIES, retry_exceptions=False, **resources)
            keys = keyframes(info)  # late segments (and the seam metric) seek instead of decoding from frame 0
            jobs = [SegmentJob(str(Path(info.path).resolve()), s, str(segment_dir(workdir, s.name)),
                               {**manifest, "segment": s.to_dict()}, cfg, working, opts.device,
                               resources["num_cpus"], opts.batch_size, weights_id, seek_point(keys, s.first),
                               kill_at, opts.precision) for s in segments]
            driver = _Driver(ray, [task.remote(job) for job in jobs], segments, workdir, progress, resumed_from,
                             planned_total=None if estimate is None else estimate + sum(s.overlap for s in segments))
            try:
                meter = _encode(driver, info, output, out_size, working, segments, opts, work, keys)
            except BaseException:
                driver.cancel()
                raise
            finally:
                driver.close()
        finally:
            if started:
                ray.shutdown()
        elapsed = time.monotonic() - t0
        frames = driver.frame_count
        work.update_manifest(frame_count=frames)
        stylised = sum(r.stylised for r in driver.results.values())
        summary = RaySummary(output, frames, resumed_from, elapsed / stylised if stylised else 0.0, weights_id,
                             workdir, segments=len(driver.used_segments), seams=meter.report())
        if not opts.keep_workdir:
            work.remove()
        return summary


def _scene_cuts(info: VideoInfo, workdir: Path, opts: RunOptions) -> list[int]:
    """Scene cuts to plan with: none without ``opts.scene_cuts``; those an earlier run of this work dir
    recorded for the same source (a resume does not decode the video again); else detected."""
    if not opts.scene_cuts:
        return []
    if not opts.restart and has_manifest(workdir):
        try:
            old = WorkDir.read_manifest(workdir)
        except ResumeError:  # unreadable: WorkDir.open reports it later
            old = {}
        if isinstance(old.get("scene_cuts"), list) and old.get("source_fingerprint") == file_fingerprint(info.path):
            return [int(c) for c in old["scene_cuts"]]
    from videostyle.motion.scenes import detect_scene_cuts

    t0 = time.monotonic()
    cuts = detect_scene_cuts(info)
    log.info("scene cuts at frames %s (%.1f s)", cuts, time.monotonic() - t0)
    return cuts


@dataclass(frozen=True)
class RaySummary(RunSummary):
    """:class:`videostyle.run.plan.RunSummary` plus the segments used and the seam metric.

    ``seconds_per_frame`` is wall time per frame stylised in this run (all workers together).
    """

    segments: int = 0
    seams: SeamReport | None = None


class _Driver:
    """Waits for segment tasks in source order, with a progress bar over all segments' journals."""

    def __init__(self, ray, refs: list, segments: list[Segment], workdir: Path, progress, initial: int,
                 planned_total: int | None):
        self.ray = ray
        self.refs = dict(zip((s.index for s in segments), refs))
        self.segments = segments
        self.workdir = workdir
        self.results: dict[int, SegmentResult] = {}
        self.bar = progress(total=planned_total, initial=initial) if progress else None
        self._shown = initial
        self.frame_count = 0
        self.used_segments: list[Segment] = []

    def result(self, index: int) -> SegmentResult:
        """Segment ``index``'s result, waiting for it (and failing fast when any segment failed)."""
        while index not in self.results:
            pending = [ref for i, ref in self.refs.items() if i not in self.results]
            ready, _ = self.ray.wait(pending, num_returns=len(pending), timeout=_POLL_S)
            for ref in ready:
                i = next(i for i, r in self.refs.items() if r == ref)
                self.results[i] = self._get(i, ref)
            self._update_bar()
        return self.results[index]

    def _get(self, index: int, ref) -> SegmentResult:
        from ray.exceptions import RayTaskError

        try:
            return self.ray.get(ref)
        except RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, VideoStyleError):
                raise cause from None
            raise
        except self.ray.exceptions.RayError as exc:  # worker lost more often than max_retries
            reason = " ".join(str(exc).split())[:300]
            raise RuntimeError(f"segment {index} failed after {MAX_RETRIES} retries ({reason}); finished "
                               f"frames are kept, rerun the same command to resume") from exc

    def _update_bar(self) -> None:
        if self.bar is None:
            return
        done = sum(journaled_count(segment_dir(self.workdir, s.name)) for s in self.segments)
        if done > self._shown:
            self.bar.update(done - self._shown)
            self._shown = done

    def cancel(self) -> None:
        for i, ref in self.refs.items():
            if i not in self.results:
                try:
                    self.ray.cancel(ref, force=True)
                except Exception:  # already finished or gone: nothing to stop
                    pass

    def close(self) -> None:
        if self.bar is not None:
            self._update_bar()
            self.bar.close()

    def _finished(self, seg: Segment, res: SegmentResult) -> WorkDir:
        """Segment ``seg``'s work dir to read, checked as a resume would; every frame its task reported
        must be there, intact."""
        work = WorkDir.view(segment_dir(self.workdir, seg.name))
        if work.finished_count < len(res.pts):
            raise RuntimeError(f"segment {seg.index} reported {len(res.pts)} frames but {work.finished_count} "
                               f"are intact in {str(work.path)!r}; rerun the same command to redo the rest")
        return work

    def frames(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(index, pts, rgb)`` of the final video in source order, cross-faded at the seams."""
        t = 0
        for i, seg in enumerate(self.segments):
            res = self.result(i)
            own = self._finished(seg, res)
            end = seg.first + len(res.pts)  # the frames it has (fewer than planned: the video ended)
            if t < seg.start or end <= t:
                break  # the video ended before this segment: none of it is used
            self.used_segments.append(seg)
            nxt = self.segments[i + 1] if i + 1 < len(self.segments) else None
            nxt_res = self.result(i + 1) if nxt is not None else None
            nxt_dir = self._finished(nxt, nxt_res) if nxt is not None else None
            while t < end:
                rgb = own.read_frame(t - seg.first)
                if nxt is not None and nxt.first <= t < nxt.first + len(nxt_res.pts):
                    if nxt_res.pts[t - nxt.first] != res.pts[t - seg.first]:  # both decoded frame t
                        raise RuntimeError(f"segments {i} and {i + 1} disagree on frame {t} (pts "
                                           f"{res.pts[t - seg.first]} vs {nxt_res.pts[t - nxt.first]}); "
                                           f"rerun without --ray")
                    rgb = crossfade(rgb, nxt_dir.read_frame(t - nxt.first), position=t - nxt.first,
                                    overlap=nxt.overlap)
                yield t, res.pts[t - seg.first], rgb
                t += 1
            if seg.stop is not None and end < seg.stop:
                break  # the video ended inside this segment
        self.frame_count = t


def _encode(driver: _Driver, info: VideoInfo, output: Path, out_size: tuple[int, int],
            working: tuple[int, int], segments: list[Segment], opts: RunOptions, work: WorkDir,
            keys: list[tuple[int, int]] | None) -> SeamMeter:
    """Encode the segments' frames as they become ready; returns the seam metric's collector."""
    from videostyle.media.decode import iter_frames
    from videostyle.media.encode import encode_video, remove_partial_outputs

    remove_partial_outputs(output)
    meter = SeamMeter(segments, estimated_frame_count(info) or 0)

    def frames():
        # Source frames only for the seam metric's few windows (it never feeds the encoder): each window
        # is decoded from the keyframe before it, not the whole film.
        source = None
        try:
            for t, pts, rgb in driver.frames():
                if meter.wants(t):
                    if source is None:
                        source = iter_frames(info, start=t, seek=seek_point(keys, t))
                    try:
                        frame = next(source, None)
                    except SeekError:  # this file does not seek exactly: decode the window from the start
                        source = iter_frames(info, start=t)
                        frame = next(source, None)
                    if frame is not None and frame.index == t:
                        meter.add(t, rgb, images.resize_rgb(frame.rgb, working))
                elif source is not None:
                    source.close()
                    source = None
                yield images.resize_rgb(rgb, out_size), pts
        finally:
            if source is not None:
                source.close()

    try:
        encode_video(frames(), output_path=output, time_base=info.time_base, source=info, crf=opts.crf,
                     preset=opts.preset, average_rate=info.average_rate)
    except OutputError as exc:
        shown = str(work.path)
        raise OutputError(f"{exc}; the stylised frames are kept in {shown!r}: fix this, then rerun the same "
                          f"command (or `videostyle resume {shlex.quote(shown)}`) to encode them") from exc
    return meter
