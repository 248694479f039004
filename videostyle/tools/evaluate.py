"""`videostyle evaluate`: temporal warping error and per-frame losses of a stylised video.

Convention:
    Frames ``(H, W, 3)`` uint8 RGB. The temporal error is :func:`videostyle.model.metrics.temporal_warping_error`
    (flows and masks measured on the SOURCE, pixels in [0, 1]); content and style losses are the
    optimiser's own weighted terms (:class:`videostyle.model.optimise.FrameObjective`) at the stylised size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from videostyle import images
from videostyle.errors import InputError
from videostyle.model.metrics import temporal_warping_errors
from videostyle.media.decode import iter_frames
from videostyle.media.probe import probe_video
from videostyle.store.workdir import frames_dir


@dataclass(frozen=True)
class Evaluation:
    """Per-frame figures of a stylised clip.

    Attributes:
        temporal_error: ``(T-1,)`` E_t for t = 1..T-1 (NaN where no pixel is reliable).
        content_loss, style_loss: ``(T,)`` weighted loss terms, or None without a style.
        source_error: ``(T-1,)`` the same E_t of the source frames themselves (at the stylised size,
            with the same flows and masks): what a perfectly stable video of this content scores.
    """

    temporal_error: np.ndarray
    content_loss: np.ndarray | None = None
    style_loss: np.ndarray | None = None
    source_error: np.ndarray | None = None

    @property
    def mean_temporal_error(self) -> float:
        return float(np.nanmean(self.temporal_error)) if self.temporal_error.size else 0.0


def read_frames(path: str | os.PathLike) -> list[np.ndarray]:
    """All frames of a video, upright, as ``(H, W, 3)`` uint8 (held in memory).

    ``path`` may also be a directory of PNG frames in name order, or a work dir (``--keep-workdir``)
    whose ``frames/`` holds them (or, after ``--passes N``, the last pass's ``passN/frames/`` in source
    order): the stylised frames exactly as the optimiser wrote them, without the
    H.264 4:2:0 chroma subsampling that adds ~5e-4 to E on stylised textures (docs/TEMPORAL.md).
    """
    folder = Path(path)
    if folder.is_dir():
        frames = frames_dir(folder)
        if frames is not None:  # a work dir
            from videostyle.run.passes import last_pass_frames
            later = last_pass_frames(folder)  # a multi-pass run: its last pass is the result
            if later is not None:
                return later
            folder = frames
        files = sorted(folder.glob("*.png"))
        if not files:
            raise InputError(f"expected a video file or a directory of PNG frames; {str(path)!r} has no .png files")
        return [images.load_image(p) for p in files]
    return [frame.rgb for frame in iter_frames(probe_video(path))]


def evaluate_frames(stylised: list[np.ndarray], source: list[np.ndarray], *, styles: tuple[str, ...] = (),
                    weights: str = "auto", model: str = "vgg19", device: str = "auto") -> Evaluation:
    """Evaluate stylised frames against their source frames (same count; sizes may differ)."""
    if len(stylised) != len(source):
        raise InputError(f"stylised video has {len(stylised)} frames but the source has {len(source)}; "
                         f"expected the same count")
    # The source itself, at the stylised size: occlusions and flow errors that no stylisation can avoid.
    h, w = stylised[0].shape[:2] if stylised else (0, 0)
    own = [rgb if rgb.shape[:2] == (h, w) else images.resize_rgb(rgb, (w, h)) for rgb in source]
    errors, source_errors = temporal_warping_errors([stylised, own], source)
    if not styles:
        return Evaluation(errors, source_error=source_errors)
    from videostyle.config import StyleConfig
    from videostyle.model.optimise import FrameObjective
    from videostyle.step import Stylizer, pick_device

    h, w = stylised[0].shape[:2]
    cfg = StyleConfig(styles=tuple(styles), weights=weights, model=model, size=max(h, w))
    stylizer = Stylizer(cfg, device=pick_device(device), working_size=(w, h))
    content, style = [], []
    for out_rgb, src_rgb in zip(stylised, source):
        target = images.to_tensor(images.resize_rgb(src_rgb, (w, h)), stylizer.device)
        objective = FrameObjective(stylizer.encoder, target, stylizer.targets, stylizer.loss_weights)
        _, parts = objective(images.to_tensor(out_rgb, stylizer.device))
        content.append(float(parts["content"]))
        style.append(float(parts["style"]))
    return Evaluation(errors, np.array(content), np.array(style), source_error=source_errors)


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


# docs/TEMPORAL.md, "Trained features": on the known-motion clip, E of the default settings' encoded
# output was 0.094x that of independent frames (each frame stylised alone, no temporal terms).
_INDEPENDENT_RATIO_MEASURED = 0.094


def format_summary(result: Evaluation) -> str:
    """What the mean error means: it beside the source clip's own (the floor: a perfectly stable video of
    this content) and what is known of independent frames (not measured here: it would stylise every
    frame again)."""
    mean = result.mean_temporal_error
    lines = [f"mean temporal error: {mean:.6f} (lower is steadier)"]
    if result.source_error is not None and result.source_error.size:
        floor = float(np.nanmean(result.source_error))
        times = f", {mean / floor:.1f}x that" if floor > 0 else ""
        lines.append(f"source clip's own error: {floor:.6f}{times} (the source is a perfectly stable video of "
                     f"this content: no stylisation scores lower)")
    lines.append(f"independent frames (each stylised alone): not measured here (it would stylise every frame "
                 f"again); on docs/TEMPORAL.md's test clip they scored {1 / _INDEPENDENT_RATIO_MEASURED:.0f}x "
                 f"the default settings' error")
    return "\n".join(lines)


def write_plot(errors: np.ndarray, path: str | os.PathLike, *, size: tuple[int, int] = (640, 320)) -> None:
    """Line plot of E_t against frame t (t = 1..T-1) as a PNG, drawn with Pillow.

    The y axis runs from 0 to the largest E_t (both labelled), the x axis from frame 1 to T-1 (labelled);
    frames with no reliable pixel (NaN) are left out of the line.
    """
    width, height = size
    left, right, top_margin, bottom = 64, 16, 24, 36
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    x0, x1, y0, y1 = left, width - right, height - bottom, top_margin  # plot box: y0 bottom, y1 top
    draw.line([(x0, y1), (x0, y0), (x1, y0)], fill="black")
    values = np.asarray(errors, dtype=float)
    finite = values[np.isfinite(values)]
    top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    draw.text((4, y1 - 6), f"{top:.2e}", fill="black")
    draw.text((4, y0 - 6), "0", fill="black")
    draw.text((x0 + 8, 4), "temporal warping error E_t per frame t", fill="black")
    if values.size:
        xs = np.linspace(x0, x1, num=values.size) if values.size > 1 else np.array([(x0 + x1) / 2])
        draw.text((x0 - 3, y0 + 6), "1", fill="black")
        if values.size > 1:
            draw.text((x1 - 12, y0 + 6), str(values.size), fill="black")
        draw.text(((x0 + x1) // 2 - 12, y0 + 18), "frame", fill="black")
        ys = y0 - np.nan_to_num(values, nan=0.0) / top * (y0 - y1)
        run: list[tuple[float, float]] = []
        for x, y, ok in [*zip(xs.tolist(), ys.tolist(), np.isfinite(values).tolist()), (0.0, 0.0, False)]:
            if ok:
                run.append((x, y))
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(200, 30, 30))
                continue
            if len(run) > 1:
                draw.line(run, fill=(200, 30, 30), width=2)
            run = []
    images.save_image_atomic(img, path)
