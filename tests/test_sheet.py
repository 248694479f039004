"""`videostyle sheet`: one frame with each style and each weight setting in one labelled PNG grid."""

from __future__ import annotations

import numpy as np
import pytest
from common import make_clip
from PIL import Image

from videostyle.cli.main import main
from videostyle.tools.sheet import band_height, compose, label_band_height, wrap_label


@pytest.mark.slow
def test_sheet_grid_has_a_labelled_cell_per_style_and_weight_setting(tmp_path, capsys):
    clip = make_clip(tmp_path / "in.mp4", n_frames=6, fps=12)
    styles = []
    for k, seed in enumerate((1, 2)):
        path = tmp_path / f"style{k}.png"
        rgb = np.zeros((32, 32, 3), np.uint8)
        rgb[..., k] = np.random.default_rng(seed).integers(100, 255, (32, 32), dtype=np.uint8)  # red / green
        Image.fromarray(rgb).save(path)
        styles.append(str(path))
    out = tmp_path / "sheet.png"
    assert main(["sheet", str(clip), "--style", ",".join(styles), "--style-weight", "5,80", "--content-weight",
                 "1", "--at", "0.25", "-o", str(out), "--weights", "untrained", "--size", "64", "--iters", "8",
                 "--content-layers", "relu2_1", "--style-layers", "relu1_1,relu2_1,relu3_1"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"wrote {out}: 2 styles x 2 weight settings")
    assert "32/32 [" in captured.err  # the progress bar: 8 iterations x 2 styles x 2 settings
    sheet = np.asarray(Image.open(out).convert("RGB"))
    w, h = 64, 48
    rows, cols = 1 + 2, 1 + 2  # header row (content frame) + styles; style thumbnail column + settings
    band = band_height(["content 1, style 80", "style style0.png", "style0.png c1 s80"], w)
    assert band > label_band_height()  # 64 px is too narrow for "content 1, style 80" on one line
    assert sheet.shape == (rows * (h + band), cols * w, 3)

    def cell(r, c):
        return sheet[r * (h + band):r * (h + band) + h, c * w:(c + 1) * w].astype(int)

    def label(r, c):
        return sheet[r * (h + band) + h:(r + 1) * (h + band), c * w:(c + 1) * w]

    assert np.abs(cell(1, 1) - cell(2, 1)).mean() > 5  # the two styles differ
    assert np.abs(cell(1, 1) - cell(1, 2)).mean() > 1  # style weight 5 vs 80 differ
    assert np.abs(cell(1, 1) - cell(0, 0)).mean() > 1  # stylised vs the content frame
    for r in range(rows):
        for c in range(cols):
            assert (label(r, c) < 128).any(), (r, c)  # some dark text on the white band
    assert (cell(0, 1) == 255).all()  # header cells are blank; their label names the weights


def test_long_labels_wrap_and_the_band_grows_to_hold_them():
    font_line = label_band_height() - 4
    text = "content 1, style 80 with a_very_long_unbroken_style_name.png"
    lines = wrap_label(text, 48)
    assert len(lines) >= 3
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")  # nothing cut, in order
    from videostyle.tools.sheet import _font
    assert all(_font().getlength(line) <= 48 - 4 for line in lines if len(line) > 1)
    assert band_height([text, "short"], 48) == len(lines) * font_line + 4
    assert band_height(["short"], 200) == label_band_height()  # one line: the band as before
    sheet = np.asarray(compose([[(np.full((30, 48, 3), 128, np.uint8), text)]], (48, 30)).convert("L"))
    assert sheet.shape == (30 + len(lines) * font_line + 4, 48)
    last_line = sheet[30 + 1 + (len(lines) - 1) * font_line:30 + 1 + len(lines) * font_line]
    assert (last_line < 128).any()  # the last line is drawn too
