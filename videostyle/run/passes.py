"""Multi-pass video stylisation (``--passes N``, artistic-videos' ``-num_passes`` / ``-blendWeight``).

Pass 1 is the ordinary forward run (:mod:`videostyle.run.chain`). Each later pass p goes over every frame
again, backward for even p and forward for odd p. A frame t starts from its pass p-1 result blended
with its neighbour n already redone in this pass (t+1 going backward, t-1 going forward), warped to t:

    init = (prev_pass[t] + b * c * warp(out[n])) / (1 + b * c)

with ``b = pass_blend`` and ``c`` the reliability mask of the flow t -> n, then ``pass_iters``
iterations with the temporal loss toward ``warp(out[n])``. Flow in the pass direction is estimated on
the working-size source frames (DIS by default): a backward pass needs the flow t -> t+1. Only the
short-term neighbour is used (``--flow-indices`` applies to pass 1).

Resume: pass p lives in a work dir of its own (:func:`videostyle.store.workdir.pass_dir`)
whose frames are journaled in processing order: position j holds source frame ``order[j]``
(``T-1-j`` going backward). Like pass 1, every neighbour is read back as the saved 8-bit frame, so a
resumed run gives the same frames as an uninterrupted one. A pass dir whose previous pass changed (its
frames' sha256 differ from what the dir was made from) is set aside and redone.

Memory: the working-size source frames are held while a pass runs (W x H x 3 bytes per frame).
"""

from __future__ import annotations

import hashlib
import logging
import os

import numpy as np

from videostyle import images
from videostyle.faults import KillPoint, never
from videostyle.media.decode import iter_frames
from videostyle.model.optimise import TemporalTerm
from videostyle.motion.flow import FlowEstimator, reliability_mask
from videostyle.motion.temporal import mask_tensor, warp_previous
from videostyle.step import Stylizer
from videostyle.store.workdir import OrderedFrames, WorkDir, has_manifest, pass_dir, pass_dirs

log = logging.getLogger(__name__)

# Manifest keys a pass dir copies from the run's manifest (what makes its frames what they are).
_INHERITED = ("config_hash", "source_fingerprint", "style_fingerprints", "mask_fingerprint", "weights_id",
              "working_size")


def pass_order(total: int, p: int) -> list[int]:
    """Source frame indices in the order pass ``p`` (1-based) processes them: even passes go backward."""
    return list(range(total - 1, -1, -1)) if p % 2 == 0 else list(range(total))


def _digest(frames) -> str:
    """sha256 over a pass's frame hashes in source order: identifies the pass a later pass was built on."""
    entries = frames.entries
    return hashlib.sha256("".join(entries[t].sha256 for t in sorted(entries)).encode()).hexdigest()


def run_passes(info, stylizer: Stylizer, work: WorkDir, working: tuple[int, int], *, progress=None,
               verbose: bool = False, kill_point: KillPoint = never):
    """Run passes 2..``cfg.passes`` after a finished pass 1 in ``work``.

    Returns ``(frames of the last pass, frames optimised in this call)``; the first is an
    :class:`~videostyle.store.workdir.OrderedFrames` the encoder reads. ``kill_point``:
    :mod:`videostyle.faults` (tests only).
    """

    cfg = stylizer.cfg
    total = work.finished_count
    pts = [work.entries[t].pts for t in range(total)]
    previous = work  # pass 1 is stored by source index already
    sources: list[np.ndarray] | None = None
    done = 0
    for p in range(2, cfg.passes + 1):
        order = pass_order(total, p)
        manifest = {key: work.manifest.get(key) for key in _INHERITED}
        manifest.update(passes_pass=p, direction="backward" if p % 2 == 0 else "forward",
                        frame_count=total, built_on=_digest(previous))
        path = pass_dir(work.path, p)
        # A pass built on other frames of the pass before (e.g. redone after damage) is set aside and redone.
        stale = has_manifest(path) and WorkDir.read_manifest(path).get("built_on") != manifest["built_on"]
        pass_work = WorkDir.open(path, manifest, restart=stale, kill_point=kill_point)
        if pass_work.finished_count < total:
            if sources is None:
                sources = _working_frames(info, working, total)
            done += _run_pass(p, order, stylizer, pass_work, previous, sources, pts, progress=progress,
                              verbose=verbose, kill_point=kill_point)
        previous = OrderedFrames(pass_work, order, work)
    return previous, done


def _working_frames(info, working: tuple[int, int], total: int) -> list[np.ndarray]:
    """The first ``total`` source frames at the working size, ``(H, W, 3)`` uint8 each."""
    frames = []
    decoded = iter_frames(info)
    try:
        for frame in decoded:
            frames.append(images.resize_rgb(frame.rgb, working))
            if len(frames) == total:
                break
    finally:
        decoded.close()
    if len(frames) != total:
        raise ValueError(f"the source gave {len(frames)} frames on a later pass, {total} on the first")
    return frames


def _run_pass(p: int, order: list[int], stylizer: Stylizer, pass_work: WorkDir, previous,
              sources: list[np.ndarray], pts: list[int], *, progress, verbose: bool, kill_point: KillPoint) -> int:
    """Optimise and journal the unfinished positions of pass ``p``; returns how many were done."""
    cfg = stylizer.cfg
    device = stylizer.device
    iterations = cfg.iters if cfg.pass_iters is None else cfg.pass_iters
    estimator = FlowEstimator(cfg.flow, device=device)  # the run's --device (OpenCV flows: the CPU)
    start = pass_work.finished_count
    neighbour = None  # the last frame done in this pass, as saved, in the optimised space
    if start > 0:
        neighbour = stylizer.read_back(pass_work.read_frame(start - 1))
    bar = progress(total=len(order), initial=start) if progress else None
    done = 0
    try:
        for j in range(start, len(order)):
            t = order[j]

            def start_from(target, j=j, t=t):
                init = stylizer.read_back(previous.read_frame(t))
                if j == 0:
                    return init, ()
                n = order[j - 1]
                flow = estimator(sources[t], sources[n])  # t -> n on frame t's grid
                mask = mask_tensor(reliability_mask(flow, estimator(sources[n], sources[t])), device)
                warped = warp_previous(neighbour, flow)
                weight = cfg.pass_blend * mask
                init = (init + weight * warped) / (1 + weight)
                return init, ((TemporalTerm(warped, mask, cfg.temporal_weight),) if cfg.temporal_weight > 0 else ())
            step = stylizer.step(sources[t], t, start_from, iterations=iterations, warm_started=True,
                                 after_optimise=lambda: kill_point(f"pass{p}-frame", j))
            result = step.result
            pass_work.write_frame(j, pts[t], step.rgb)
            kill_point(f"pass{p}-journal", j)
            neighbour = step.previous
            done += 1
            if verbose:
                log.info("pass %d, frame %d: %s (%d it)", p, t,
                         " ".join(f"{k}={v:.4g}" for k, v in result.losses.items()), result.iterations)
            if bar is not None:
                bar.set_postfix_str(f"pass {p} loss {result.losses['total']:.3g}")
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return done


def last_pass_frames(workdir: str | os.PathLike) -> list[np.ndarray] | None:
    """The frames of the last finished later pass of a kept work dir, in source order; None when the run
    had a single pass (its frames are ``WORKDIR/frames``) or no later pass is complete."""
    for p, path in reversed(pass_dirs(workdir)):
        manifest = WorkDir.read_manifest(path)
        total = manifest.get("frame_count")
        work = WorkDir.open(path, manifest)
        if total and work.finished_count == total:
            view = OrderedFrames(work, pass_order(total, p), work)
            return [view.read_frame(t) for t in range(total)]
    return None
