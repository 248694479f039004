"""`videostyle evaluate`: temporal warping error and per-frame losses of a stylised video.

Convention:
    Frames ``(H, W, 3)`` uint8 RGB. The temporal error is :func:`videostyle.metrics.temporal_warping_error`
    (flows and masks measured on the SOURCE, pixels in [0, 1]); content and style losses are the
    optimiser's own weighted terms (:class:`videostyle.optimise.FrameObjective`) at the stylised size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from . import images
from .errors import InputError
from .metrics import temporal_warping_error
from .video.decode import iter_frames
from .video.probe import probe_video


@dataclass(frozen=True)
class Evaluation:
    """Per-frame figures of a stylised clip.

    Attributes:
        temporal_error: ``(T-1,)`` E_t for t = 1..T-1 (NaN where no pixel is reliable).
        content_loss, style_loss: ``(T,)`` weighted loss terms, or None without a style.
    """

    temporal_error: np.ndarray
    content_loss: np.ndarray | None = None
    style_loss: np.ndarray | None = None

    @property
    def mean_temporal_error(self) -> float:
        return float(np.nanmean(self.temporal_error)) if self.temporal_error.size else 0.0


def read_frames(path: str | os.PathLike) -> list[np.ndarray]:
    """All frames of a video, upright, as ``(H, W, 3)`` uint8 (held in memory)."""
    return [frame.rgb for frame in iter_frames(probe_video(path))]


def evaluate_frames(stylised: list[np.ndarray], source: list[np.ndarray], *, styles: tuple[str, ...] = (),
                    weights: str = "auto", device: str = "auto") -> Evaluation:
    """Evaluate stylised frames against their source frames (same count; sizes may differ)."""
    if len(stylised) != len(source):
        raise InputError(f"stylised video has {len(stylised)} frames but the source has {len(source)}; "
                         f"expected the same count")
    errors = temporal_warping_error(stylised, source)
    if not styles:
        return Evaluation(errors)
    from .config import StyleConfig
    from .optimise import FrameObjective
    from .pipeline import Stylizer, pick_device

    h, w = stylised[0].shape[:2]
    cfg = StyleConfig(styles=tuple(styles), weights=weights, size=max(h, w))
    stylizer = Stylizer(cfg, device=pick_device(device), working_size=(w, h))
    content, style = [], []
    for out_rgb, src_rgb in zip(stylised, source):
        target = images.to_tensor(images.resize_rgb(src_rgb, (w, h)), stylizer.device)
        objective = FrameObjective(stylizer.encoder, target, stylizer.targets, stylizer.loss_weights)
        _, parts = objective(images.to_tensor(out_rgb, stylizer.device))
        content.append(float(parts["content"]))
        style.append(float(parts["style"]))
    return Evaluation(errors, np.array(content), np.array(style))


def format_table(result: Evaluation) -> str:
    """A plain-text table: one row per frame, then the means."""
    has_losses = result.content_loss is not None
    head = f"{'frame':>6}  {'temporal_error':>14}" + (f"  {'content':>10}  {'style':>10}" if has_losses else "")
    lines = [head]
    n = len(result.temporal_error) + 1
    for t in range(n):
        err = "-" if t == 0 else f"{result.temporal_error[t - 1]:.6f}"
        row = f"{t:>6}  {err:>14}"
        if has_losses:
            row += f"  {result.content_loss[t]:>10.4f}  {result.style_loss[t]:>10.4f}"
        lines.append(row)
    mean = f"{'mean':>6}  {result.mean_temporal_error:>14.6f}"
    if has_losses:
        mean += f"  {result.content_loss.mean():>10.4f}  {result.style_loss.mean():>10.4f}"
    lines.append(mean)
    return "\n".join(lines)


def write_plot(errors: np.ndarray, path: str | os.PathLike, *, size: tuple[int, int] = (640, 320)) -> None:
    """Line plot of E_t per frame as a PNG, drawn with Pillow (axes, y max labelled)."""
    width, height = size
    margin = 40
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    draw.line([(margin, margin // 2), (margin, height - margin), (width - 10, height - margin)], fill="black")
    values = np.nan_to_num(np.asarray(errors, dtype=float))
    top = float(values.max()) if values.size and values.max() > 0 else 1.0
    draw.text((4, margin // 2 - 6), f"{top:.4f}", fill="black")
    draw.text((margin, height - margin + 8), "frame", fill="black")
    draw.text((margin + 60, 4), "temporal warping error per frame", fill="black")
    if values.size:
        xs = np.linspace(margin, width - 10, num=max(2, values.size))[: values.size]
        ys = height - margin - values / top * (height - 1.5 * margin)
        points = list(zip(xs.tolist(), ys.tolist()))
        if len(points) > 1:
            draw.line(points, fill=(200, 30, 30), width=2)
        for x, y in points:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(200, 30, 30))
    img.save(path)
