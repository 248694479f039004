"""`videostyle preview`: stylise one frame of a video quickly to tune settings before a long run.

Also picks the frame nearest a time (shared with :mod:`videostyle.tools.sheet`) and writes the
`videostyle stylize` command line that uses the same settings.

Convention:
    Times are seconds from the video's first frame (a non-zero start pts is subtracted).
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass

from videostyle import images
from videostyle import config
from videostyle.config import StyleConfig
from videostyle.errors import InputError
from videostyle.paths import style_inputs
from videostyle.media.decode import SourceFrame, iter_frames
from videostyle.media.probe import probe_video


@dataclass(frozen=True)
class Shot:
    """What a preview did: the frame's time (s), the seconds it took, the working size ``(W, H)`` px."""

    time_s: float
    seconds: float
    size: tuple[int, int]


def frame_at(video: str | os.PathLike, at: float | None) -> tuple[SourceFrame, float]:
    """The frame nearest ``at`` seconds (None: the middle of the video) and its time from the start.

    Without a known duration, an ``at`` past the end gives the last frame.

    Raises:
        InputError: ``at`` is negative or beyond the video's duration (one line, with the duration).
    """
    info = probe_video(video)
    duration = info.length_s
    if at is not None and at < 0:
        raise InputError(f"--at must be at least 0 s, got {at:g}")
    if at is not None and duration is not None and at > duration:
        raise InputError(f"--at {at:g} s is beyond the end of {str(video)!r} ({duration:.3f} s long)")
    wanted = at if at is not None else (duration / 2 if duration else None)
    if wanted is None:  # no duration: count the frames first (one decode), then take the middle one
        wanted = _time_of_middle_frame(info)
    frames = iter_frames(info)
    best, best_t, start = None, 0.0, None
    try:
        for frame in frames:
            start = frame.time_s if start is None else start
            t = frame.time_s - start
            if best is None or abs(t - wanted) < abs(best_t - wanted):
                best, best_t = frame, t
            if t > wanted:
                break
    finally:
        frames.close()
    return best, best_t


def _time_of_middle_frame(info) -> float:
    """Seconds from the first frame to the middle frame, by decoding the times only (no frame kept)."""
    frames = iter_frames(info)
    try:
        times = [frame.time_s for frame in frames]
    finally:
        frames.close()
    return times[len(times) // 2] - times[0] if times else 0.0


def preview_frame(video: str | os.PathLike, output: str | os.PathLike, cfg: StyleConfig, *,
                  at: float | None = None, device: str = "auto", precision: str = "fp32") -> Shot:
    """Stylise the frame nearest ``at`` alone (``cfg.iters_first`` iterations) into the image ``output``."""
    from videostyle.run.plan import check_image_output
    from videostyle.step import pick_device, stylize_still

    output = check_image_output(output, inputs=[("input video", video), *style_inputs(cfg)])
    frame, t = frame_at(video, at)
    t0 = time.monotonic()
    rgb, _ = stylize_still(frame.rgb, cfg, device=pick_device(device), precision=precision)
    seconds = time.monotonic() - t0
    images.save_image_atomic(rgb, output)
    return Shot(t, seconds, (rgb.shape[1], rgb.shape[0]))


# The StyleConfig fields the preview's options set, shown as `videostyle stylize` flags (config.SETTINGS).
_FIELDS = ("style_weights", "size", "style_scale", "optimizer", "learning_rate", "content_weight", "style_weight",
           "tv_weight", "content_layers", "style_layers", "pooling", "init_first", "tol_loss_relative",
           "lbfgs_history", "weights", "model", "seed", "mask", "mask_feather", "octaves", "range_weight")


def _shown(value) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(":".join(f"{v:g}" if isinstance(v, float) else str(v) for v in item)
                        if isinstance(item, (tuple, list)) else (f"{item:g}" if isinstance(item, float) else str(item))
                        for item in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def stylize_command(video: str | os.PathLike, cfg: StyleConfig, *, output: str | os.PathLike | None = None) -> str:
    """The `videostyle stylize` command that stylises ``video`` with ``cfg``'s settings (flags that differ
    from stylize's defaults only) into ``output`` (``-o``; None: left to stylize's default name)."""
    default = StyleConfig(styles=cfg.styles)
    argv = ["videostyle", "stylize", str(video), "--style", ",".join(cfg.styles)]
    if output is not None:
        argv += ["-o", str(output)]
    if (cfg.iters_first, cfg.iters) != (default.iters_first, default.iters):
        argv += ["--iters", f"{cfg.iters_first}" if cfg.iters_first == cfg.iters else f"{cfg.iters_first},{cfg.iters}"]
    for name in _FIELDS:
        flag = config.flag(StyleConfig, name)
        value = getattr(cfg, name)
        if value != getattr(default, name) and value not in (None, ()):
            argv += [flag, _shown(value)]
    if cfg.preserve_colors:
        argv.append("--preserve-colors")
    return shlex.join(argv)
