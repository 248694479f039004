"""`videostyle sheet`: one frame with each style and each weight setting in one labelled PNG grid."""

from __future__ import annotations

import numpy as np
import pytest
from common import make_clip
from PIL import Image

from videostyle.cli.main import main
from videostyle.tools.sheet import label_band_height


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
    assert capsys.readouterr().out.startswith(f"wrote {out}: 2 styles x 2 weight settings")
    sheet = np.asarray(Image.open(out).convert("RGB"))
    w, h, band = 64, 48, label_band_height()
    rows, cols = 1 + 2, 1 + 2  # header row (content frame) + styles; style thumbnail column + settings
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
