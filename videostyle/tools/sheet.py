"""`videostyle sheet`: a contact sheet of one frame rendered with each style and each weight setting.

Layout (cells at the working size ``(w, h)``, each with a label band of ``band`` px under it)::

    row 0:      content frame      | header "content C, style S" for each column ...
    row 1 + i:  style image i      | frame stylised with style i, content weight C, style weight S ...

Columns 1.. are every (content weight, style weight) combination, content weights outer. The PNG is
``(1 + combinations) * w`` px wide and ``(1 + styles) * (h + band)`` px high. Labels use Pillow's default
font, wrapped to the cell's width (at spaces, else inside a word); the band is as high as the label with
the most lines needs.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from videostyle import images
from videostyle.config import StyleConfig
from videostyle.paths import style_inputs


@dataclass(frozen=True)
class SheetResult:
    """rows: styles; columns: weight combinations; cell ``(w, h)`` px; band: label px; time_s: the frame's
    time; seconds: rendering time."""

    rows: int
    columns: int
    cell: tuple[int, int]
    band: int
    time_s: float
    seconds: float


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def label_band_height(font=None) -> int:
    """Height in px of the label band under each cell: the font's text height plus 4 px of margin."""
    font = font or _font()
    left, top, right, bottom = font.getbbox("Ag")
    return int(bottom) + 4


def wrap_label(text: str, width: int, font=None) -> list[str]:
    """``text`` in lines of at most ``width - 4`` px (2 px margin each side): broken at spaces, and a word
    longer than a line inside the word. Every character is kept, in order."""
    font = font or _font()
    room = max(1, width - 4)
    lines: list[str] = []
    line = ""
    for word in text.split(" "):
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= room:
            line = candidate
            continue
        if line:
            lines.append(line)
        line = ""
        for ch in word:  # a word wider than the cell: as many characters per line as fit (at least one)
            if line and font.getlength(line + ch) > room:
                lines.append(line)
                line = ""
            line += ch
    lines.append(line)
    return lines


def band_height(labels: Sequence[str], width: int, font=None) -> int:
    """Height in px of a label band that holds each of ``labels`` wrapped to ``width`` px
    (:func:`wrap_label`): the most lines times the line height, plus 4 px of margin."""
    font = font or _font()
    line = label_band_height(font) - 4
    return max([len(wrap_label(text, width, font)) for text in labels] or [1]) * line + 4


def _thumbnail(rgb: np.ndarray, cell: tuple[int, int]) -> np.ndarray:
    """``rgb`` scaled to fit inside ``cell = (w, h)``, centred on white; ``(h, w, 3)`` uint8."""
    w, h = cell
    scale = min(w / rgb.shape[1], h / rgb.shape[0])
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    small = images.resize_rgb(rgb, size)
    out = np.full((h, w, 3), 255, np.uint8)
    y0, x0 = (h - size[1]) // 2, (w - size[0]) // 2
    out[y0:y0 + size[1], x0:x0 + size[0]] = small
    return out


def compose(cells: Sequence[Sequence[tuple[np.ndarray | None, str]]], cell: tuple[int, int]) -> Image.Image:
    """Grid of ``cells[row][col] = (rgb (h, w, 3) uint8 or None for blank, label)`` with labels under each."""
    font = _font()
    w, h = cell
    band = band_height([label for row in cells for _, label in row], w, font)
    line = label_band_height(font) - 4
    rows, cols = len(cells), max(len(r) for r in cells)
    sheet = Image.new("RGB", (cols * w, rows * (h + band)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(cells):
        for c, (rgb, label) in enumerate(row):
            x, y = c * w, r * (h + band)
            if rgb is not None:
                sheet.paste(Image.fromarray(rgb), (x, y))
            for k, text in enumerate(wrap_label(label, w, font)):
                draw.text((x + 2, y + h + 1 + k * line), text, fill="black", font=font)
    return sheet


def contact_sheet(video: str | os.PathLike, output: str | os.PathLike, cfg: StyleConfig, *,
                  content_weights: Sequence[float], style_weights: Sequence[float], at: float | None = None,
                  device: str = "auto", precision: str = "fp32", progress=None) -> SheetResult:
    """Render the frame nearest ``at`` with each of ``cfg.styles`` (alone, no blend) and each weight
    combination into the PNG ``output`` (see module docstring).

    ``progress``: a ``tqdm``-like factory called as ``progress(total=iterations)`` for all the cells; the
    bar gets ``update(1)`` per optimiser iteration and ``close()``."""
    from videostyle.run.plan import check_image_output
    from videostyle.step import pick_device, still_iterations, stylize_still
    from videostyle.tools.preview import frame_at

    output = check_image_output(output, inputs=[("input video", video), *style_inputs(cfg)])
    frame, t = frame_at(video, at)
    t0 = time.monotonic()
    dev = pick_device(device)
    combos = [(cw, sw) for cw in content_weights for sw in style_weights]
    working = images.working_size(frame.rgb.shape[1], frame.rgb.shape[0], cfg.size)
    cells = [[(images.resize_rgb(frame.rgb, working), f"content t={t:.2f}s")]
             + [(None, f"content {cw:g}, style {sw:g}") for cw, sw in combos]]
    bar = progress(total=still_iterations(frame.rgb, cfg) * len(combos) * len(cfg.styles)) if progress else None
    try:
        for style in cfg.styles:
            name = Path(style).name
            row = [(_thumbnail(images.load_image(style), working), f"style {name}")]
            for cw, sw in combos:
                one = replace(cfg, styles=(style,), style_weights=(), content_weight=cw, style_weight=sw)
                rgb, _ = stylize_still(frame.rgb, one, device=dev, precision=precision,
                                       on_step=(lambda: bar.update(1)) if bar is not None else None)
                row.append((rgb, f"{name} c{cw:g} s{sw:g}"))
            cells.append(row)
    finally:
        if bar is not None:
            bar.close()
    sheet = compose(cells, working)
    images.save_image_atomic(sheet, output)
    band = sheet.height // len(cells) - working[1]
    return SheetResult(len(cfg.styles), len(combos), working, band, t, time.monotonic() - t0)
