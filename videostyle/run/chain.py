"""The chain: one process stylises a video's frames in order, each warm-started from the one before.

probe -> decode (thread) -> flow (worker) -> THE step (:meth:`videostyle.step.Stylizer.step`) -> journal
(thread) -> encode (thread).

Flow depends only on source frames, so :class:`~videostyle.motion.flow.FlowWorker` computes it ahead of the
optimiser. Every finished frame is journaled (:mod:`videostyle.store.workdir`), and the encoder gets only
journaled frames (:mod:`videostyle.media.encode_stream`), so an interrupted run resumes without redoing
finished frames and produces the same frames as an uninterrupted one: the warm start always uses the
saved 8-bit previous frame. :func:`run_chain` is also what a Ray segment runs
(:mod:`videostyle.run.distributed`); which of these runs is chosen in :mod:`videostyle.run.api` alone.
"""

from __future__ import annotations

import logging
import shlex
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from videostyle import images
from videostyle.config import RunOptions, StyleConfig
from videostyle.errors import InputError, OutputError
from videostyle.faults import KillPoint, never
from videostyle.media.decode import FramePrefetcher, iter_frames
from videostyle.media.encode import remove_partial_outputs
from videostyle.media.encode_stream import StreamingEncoder
from videostyle.media.probe import VideoInfo
from videostyle.model.optimise import FrameStart, TemporalTerm
from videostyle.motion import scenes
from videostyle.motion.flow import FlowEstimator, FlowWorker
from videostyle.motion.temporal import (initial_image, long_term_masks, mask_tensor, source_changed, warm_start_mask,
                                       warp_previous)
from videostyle.run.plan import (ProgressFactory, RunPlan, RunSummary, check_disk_space, estimated_frame_count,
                                 first_frame, open_run_workdir, pipeline_memory, snapshot_writer)
from videostyle.step import Stylizer, frame_generator, fresh_frame_iterations, pick_device
from videostyle.store.frame_writer import FrameWriter
from videostyle.store.workdir import FrameStore, WorkDir
from videostyle.timing import PHASES

log = logging.getLogger(__name__)

# A later stage over the finished chain (``--passes``: :func:`videostyle.run.passes.run_passes`), chosen by
# the dispatcher: ``(info, stylizer, work, working, progress=, verbose=, kill_point=)`` -> (frames, done).
LaterPasses = Callable[..., "tuple[FrameStore, int]"]


def _keep_memory_plan(work: WorkDir, stylizer: Stylizer, opts: RunOptions) -> None:
    """A resume keeps the memory plan the run started with (the first run records it in the manifest):
    the L-BFGS history always, since it changes pixels, and the tile unless ``--tile`` says otherwise,
    since tiled and untiled frames differ by float rounding, which would end the byte-identical resume.
    Both would otherwise follow the memory free at the time."""
    if "tile" in work.manifest:  # a run made before: a manifest without lbfgs_pairs kept the config's
        stylizer.history = work.manifest.get("lbfgs_pairs", stylizer.cfg.lbfgs_history)
        if opts.tile is None:
            stylizer.tile = work.manifest["tile"]
    plan = {"tile": stylizer.tile, "lbfgs_pairs": stylizer.history}
    if any(work.manifest.get(key, "unset") != value for key, value in plan.items()):
        work.update_manifest(**plan)


def _stylize_in_workdir(plan: RunPlan, stylizer: Stylizer, work: WorkDir, opts: RunOptions,
                        progress: ProgressFactory | None, later_passes: LaterPasses | None,
                        kill_point: KillPoint) -> RunSummary:
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
    if later_passes is None:
        encoder = StreamingEncoder(work, info, output, plan.out_size, crf=opts.crf, preset=opts.preset,
                                   before_frame=_encode_kill_hook(kill_point))
    try:
        if total is None or work.finished_count < total:
            done_now = run_chain(info, stylizer, work, working, progress=progress, verbose=opts.verbose,
                                 batch_size=opts.batch_size, snapshots=snapshot_writer(output, opts.save_every),
                                 on_journaled=encoder.add if encoder is not None else None,
                                 kill_point=kill_point)
            work.update_manifest(frame_count=work.finished_count)  # decoding is complete: the real count
    except BaseException:
        if encoder is not None:
            encoder.abort()  # no output; the frames are journaled
        raise
    final: FrameStore = work
    if later_passes is not None:
        final, done_later = later_passes(info, stylizer, work, working, progress=progress,
                                         verbose=opts.verbose, kill_point=kill_point)
        done_now += done_later
    elapsed = time.monotonic() - t0
    if encoder is None or not encoder.finish():
        if encoder is not None:
            log.info("encoding while stylising failed (%s); encoding the %d journaled frames again",
                     encoder.error, final.finished_count)
        _encode_journaled(final, info, output, plan.out_size, opts, kill_point)
    run_seconds = time.monotonic() - t0
    log.info("busy time per phase (share of the %.1f s run): %s", run_seconds, PHASES.summary(run_seconds))
    summary = RunSummary(output, work.finished_count, resumed_from,
                         elapsed / done_now if done_now else 0.0, stylizer.weights.weights_id, workdir)
    if not opts.keep_workdir:
        work.remove()
    return summary


def _encode_kill_hook(kill_point: KillPoint) -> Callable[[int], None]:
    """The encoder's test kill point: after two frames went to the encoder (a partial output exists)."""
    def before_frame(index: int) -> None:
        if index == 2:
            kill_point("encode")
    return before_frame


def _encode_journaled(work: FrameStore, info: VideoInfo, output: Path, out_size: tuple[int, int],
                      opts: RunOptions, kill_point: KillPoint) -> None:
    """Encode the journaled frames (only these: a crash here redoes the encoding, never a frame)."""
    remove_partial_outputs(output)  # what an encode killed earlier left beside the output
    encoder = StreamingEncoder(work, info, output, out_size, crf=opts.crf, preset=opts.preset,
                               before_frame=_encode_kill_hook(kill_point))
    if encoder.finish():  # no frame will be added: it encodes the journal and stops
        return
    if not isinstance(encoder.error, OutputError):
        raise encoder.error
    kept, shown = work.finished_count, str(work.path)
    raise OutputError(f"{encoder.error}; {kept} stylised frame{'' if kept == 1 else 's'} kept in {shown!r}: fix "
                      f"this, then rerun the same command (or `videostyle resume {shlex.quote(shown)}`) to "
                      f"encode them") from encoder.error


def run_chain(info: VideoInfo, stylizer: Stylizer, work: FrameStore, working: tuple[int, int], *,
              progress: ProgressFactory | None, verbose: bool, batch_size: int = 1,
              first: int = 0, stop: int | None = None, seek: tuple[int, int] | None = None,
              snapshots=None, on_journaled: Callable[[int, int, np.ndarray], None] | None = None,
              kill_point: KillPoint = never) -> int:
    """Optimise and journal every frame not yet finished; returns how many were done in this call.

    ``snapshots``: a :class:`~videostyle.store.snapshots.SnapshotWriter` for frame 0 (``--save-every``).

    Frames are journaled ``batch_size`` at a time (and at the end): an interruption loses at most the
    unjournaled part of one batch. ``first``/``stop``: the chain covers source frames ``first ..
    stop-1`` (``stop=None``: to the end); frame ``first``, and each scene cut
    (:func:`videostyle.motion.scenes.is_cut` on the flow's reliability and the colours), starts it afresh
    (``init_first``, ``iters_first``, octaves, no temporal terms). ``work`` indexes frames by source index: its ``finished_count`` is the next
    frame to make (a Ray segment passes a view of its own work dir, see :mod:`videostyle.run.distributed`).
    ``seek``: a keyframe ``(index, pts)`` at or before ``first`` to start decoding at (``iter_frames``).
    ``on_journaled(index, pts, rgb)``: called on the writer's thread, in index order, once each frame is
    journaled (the streaming encoder). ``kill_point``: :mod:`videostyle.faults` (tests only).
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
            previous[start - k] = stylizer.read_back(work.read_frame(start - k))

    def after_write(index: int, pts: int, rgb: np.ndarray) -> None:
        if on_journaled is not None:
            on_journaled(index, pts, rgb)
        kill_point("journal", index)

    writer = FrameWriter(work, after_write=after_write)
    with writer, FramePrefetcher(iter_frames(info, start=first_decoded, seek=seek)) as frames:
        records = _frame_records(frames, cfg, working, device)
        try:
            last_histogram = None  # of the frame before, for the scene cut test
            last_content: tuple[int, np.ndarray] | None = None  # the source frame before, at the working size
            for index, pts, content_rgb, flows, masks in records:
                before = last_content[1] if last_content is not None and last_content[0] == index - 1 else None
                last_content = (index, content_rgb)
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

                def start_from(target, index=index):
                    return _init_and_temporal(cfg, index, target, previous, flows, masks,
                                              frame_generator(cfg.seed, index),
                                              sources=(content_rgb, before))
                # A frame from scratch takes minutes on a CPU (iters_first at every octave): the bar
                # counts its iterations, so a first frame does not look like a hang.
                stylizer.on_step = _iteration_counter(bar, index, stylizer, content_rgb) if fresh else None
                done_frame = stylizer.step(
                    content_rgb, index, start_from, iterations=cfg.iters_first if fresh else cfg.iters,
                    warm_started=not fresh and cfg.init.startswith("prev"),
                    snapshots=snapshots if index == 0 else None,
                    after_optimise=lambda: kill_point("frame", index, before_kill=writer.flush))
                stylizer.on_step = None
                result = done_frame.result
                pending.append((index, pts, done_frame.rgb))
                if len(pending) >= batch_size:
                    writer.submit(pending)
                    pending = []
                # The 8-bit frame as saved (coloured, composited), as a resume reads it back.
                previous[index] = done_frame.previous
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


def _iteration_counter(bar, index: int, stylizer: Stylizer, content_rgb: np.ndarray) -> Callable[[], None] | None:
    """``on_step`` for a frame optimised from scratch: the bar's postfix shows ``frame N: iteration i/n``
    (``n``: ``iters_first`` at each octave level); None without a bar."""
    if bar is None:
        return None
    total = fresh_frame_iterations(stylizer.cfg, (content_rgb.shape[1], content_rgb.shape[0]))
    done = [0]

    def on_step() -> None:
        done[0] += 1
        if done[0] % 5 == 0 or done[0] == total:
            bar.set_postfix_str(f"frame {index}: iteration {done[0]}/{total}")
    return on_step


def _frame_records(frames, cfg: StyleConfig, working: tuple[int, int], device: torch.device) -> Iterator:
    """Yields ``(index, pts, content_rgb (H,W,3) uint8 at working size, flows, masks)``.

    ``flows[k]`` is the backward flow t -> t-k ``(H, W, 2)`` px at the working size and ``masks[k]``
    its ``(H, W)`` reliability; both empty when the config needs no flow.
    """
    if not cfg.needs_flow:
        for frame in frames:
            yield frame.index, frame.pts, images.resize_rgb(frame.rgb, working), {}, {}
        return
    estimator = FlowEstimator(cfg.flow, device=device)  # the run's --device (OpenCV flows: the CPU)
    with FlowWorker(frames, estimator, offsets=cfg.flow_offsets, resize_to=working) as worker:
        for rec in worker:
            yield rec.index, rec.pts, images.resize_rgb(rec.rgb, working), rec.back, rec.mask


def _init_and_temporal(cfg: StyleConfig, index: int, content: torch.Tensor,
                       previous: dict[int, torch.Tensor], flows: dict, masks: dict,
                       generator: torch.Generator, *, sources: tuple[np.ndarray, np.ndarray] | None = None
                       ) -> FrameStart:
    """Initial image, temporal terms and fresh pixels for frame ``index`` (Ruder et al.). ``sources``: the source
    frames ``index`` and ``index - 1`` at the working size, ``(H, W, 3)`` uint8, for
    ``prev-warped-unchanged``'s change mask."""
    if index == 0 or (index - 1) not in previous:
        return FrameStart(initial_image(cfg.init_first, content=content, generator=generator))
    warped, mask_t = {}, {}
    if flows:
        for k, mask in long_term_masks({k: masks[k] for k in flows if index - k in previous}).items():
            warped[k] = warp_previous(previous[index - k], flows[k])
            mask_t[k] = mask_tensor(mask, content.device)
    mask = None
    if cfg.init.startswith("prev-warped") and 1 in flows:
        # The source before is at hand whenever its flow is: the records start before the resume point.
        changed = source_changed(*sources, flows[1]) if cfg.init == "prev-warped-unchanged" else None
        mask = mask_tensor(warm_start_mask(cfg.init, flows[1], masks[1], changed), content.device)
    init = initial_image(cfg.init, content=content, previous=previous[index - 1],
                         warped_previous=warped.get(1), mask=mask, generator=generator)
    temporal = ()
    if cfg.temporal_weight > 0:
        temporal = tuple(TemporalTerm(warped[k], mask_t[k], cfg.temporal_weight) for k in sorted(warped))
    return FrameStart(init, temporal, None if mask is None else 1.0 - mask)


def stylize_local(plan: RunPlan, opts: RunOptions, *, progress: ProgressFactory | None = None,
                  later_passes: LaterPasses | None = None, kill_point: KillPoint = never) -> RunSummary:
    """Stylise ``plan``'s video in this process: the chain over every frame (resuming the work dir),
    then ``later_passes`` over the finished chain when given (``--passes``), then the encoding.

    Called by :func:`videostyle.run.api.stylize_video`, which decides whether there are later passes.
    """
    cfg, info, working = plan.cfg, plan.info, plan.working
    check_disk_space(plan.workdir, working, estimated_frame_count(info))
    device = pick_device(opts.device)
    reference = first_frame(info, working, device) if cfg.preserve_colors else None
    stylizer = Stylizer(cfg, device=device, working_size=working, colour_reference=reference,
                        precision=opts.precision)
    stylizer.plan_memory(working, tile=opts.tile, max_memory=opts.max_memory,
                         reserve=pipeline_memory((info.width, info.height), plan.out_size, working))
    work, _ = open_run_workdir(plan, stylizer.weights.weights_id, opts, device=device, kill_point=kill_point)
    with work:  # locked until the end; a run stopped before its first frame leaves no work dir behind
        _keep_memory_plan(work, stylizer, opts)
        return _stylize_in_workdir(plan, stylizer, work, opts, progress, later_passes, kill_point)
