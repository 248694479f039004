"""Tiled evaluation (videostyle.model.tiled) gives the untiled objective's value and gradient."""

from __future__ import annotations

import pytest
import torch

from videostyle.model.features import VGGEncoder, resolve_weights
from videostyle.model.optimise import FrameObjective, LossWeights, TemporalTerm, compute_style_targets, stylize_frame
from videostyle.model import memory
from videostyle.model.memory import choose_tile
from videostyle.model.tiled import ALIGN, TiledObjective, plan_tiles, receptive_radius

STYLE = {"relu1_1": 0.2, "relu2_1": 0.2, "relu3_1": 0.2, "relu4_1": 0.2, "relu5_1": 0.2}
CONTENT = {"relu4_2": 1.0}


@pytest.fixture(scope="module")
def setup():
    encoder = VGGEncoder([*CONTENT, *STYLE], resolve_weights("untrained"))
    g = torch.Generator().manual_seed(0)
    # A smooth picture (upsampled noise), 136x184: not multiples of 16, so the last tiles are ragged.
    content = torch.nn.functional.interpolate(torch.rand((1, 3, 17, 23), generator=g), size=(136, 184),
                                              mode="bicubic").clamp(0, 1)
    style = torch.rand((1, 3, 96, 96), generator=g)
    targets = compute_style_targets(encoder, [style], [1.0], list(STYLE))
    weights = LossWeights(1.0, 20.0, 0.01, CONTENT, STYLE, range=100.0)
    temporal = [TemporalTerm(torch.rand((1, 3, 136, 184), generator=g), torch.ones((1, 1, 136, 184)), 50.0)]
    image = (content + 0.2 * torch.randn(content.shape, generator=g)).clamp(-0.1, 1.1)
    return encoder, content, targets, weights, temporal, image


def _value_and_grad(objective, image):
    x = image.clone().requires_grad_(True)
    total, parts = objective.loss_and_gradient(x)
    return total, parts, x.grad


def test_the_radius_of_vgg():
    names = [n for n, _ in VGGEncoder(["relu5_1"], resolve_weights("untrained")).stack.named_children()]
    assert receptive_radius(names) == 85
    assert receptive_radius(names[:names.index("relu4_2") + 1]) == 45


def test_tiles_partition_the_frame():
    tiles = plan_tiles(136, 184, tile=64, halo=40)
    covered = torch.zeros(136, 184, dtype=torch.int32)
    for t in tiles:
        covered[t.y0:t.y1, t.x0:t.x1] += 1
        assert t.cy0 % ALIGN == 0 and t.cx0 % ALIGN == 0
        assert t.cy0 <= t.y0 - min(t.y0, 40) and t.cy1 >= min(136, t.y1 + 40)
    assert bool((covered == 1).all())


@pytest.mark.slow
def test_full_halo_gives_the_untiled_value_and_gradient(setup):
    encoder, content, targets, weights, temporal, image = setup
    total, parts, grad = _value_and_grad(FrameObjective(encoder, content, targets, weights, temporal), image)
    tiled = TiledObjective(encoder, content, targets, weights, temporal, tile=64, halo=96)
    assert len(tiled.tiles) == 9
    t_total, t_parts, t_grad = _value_and_grad(tiled, image)
    assert float(t_total) == pytest.approx(float(total), rel=1e-5)
    for name in parts:
        assert float(t_parts[name]) == pytest.approx(float(parts[name]), rel=1e-4), name
    assert float((t_grad - grad).norm() / grad.norm()) < 1e-4
    loss_only, _ = tiled.loss(image)
    assert float(loss_only) == pytest.approx(float(total), rel=1e-5)


@pytest.mark.slow
def test_a_tiled_frame_matches_the_untiled_one(setup):
    encoder, content, targets, weights, temporal, _ = setup
    plain = stylize_frame(FrameObjective(encoder, content, targets, weights, temporal), content, iterations=8)
    tiled = stylize_frame(TiledObjective(encoder, content, targets, weights, temporal, tile=80, halo=96),
                          content, iterations=8)
    # The gradients agree to float rounding; L-BFGS without a line search amplifies that a little.
    diff = (tiled.image - plain.image).abs()
    assert float(diff.mean()) < 1e-3 and float(diff.max()) < 0.1
    assert tiled.losses["total"] == pytest.approx(plain.losses["total"], rel=1e-2)


@pytest.mark.slow
def test_a_forced_tile_gives_the_untiled_picture(tmp_path):
    """`image --tile`: the same picture as untiled, to 8-bit rounding after a few iterations."""
    import numpy as np
    from PIL import Image

    from videostyle.config import RunOptions, StyleConfig
    from videostyle.run.api import stylize_image

    g = np.random.default_rng(0)
    photo, style = tmp_path / "photo.png", tmp_path / "style.png"
    Image.fromarray(g.integers(0, 255, (144, 192, 3), dtype=np.uint8)).save(photo)
    Image.fromarray(g.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(style)
    cfg = StyleConfig(styles=(str(style),), size=192, iters_first=4, octaves=2, weights="untrained")
    stylize_image(photo, tmp_path / "plain.png", cfg, RunOptions(device="cpu"))
    stylize_image(photo, tmp_path / "tiled.png", cfg, RunOptions(device="cpu", tile=96))
    plain = np.asarray(Image.open(tmp_path / "plain.png")).astype(int)
    tiled = np.asarray(Image.open(tmp_path / "tiled.png")).astype(int)
    assert plain.shape == tiled.shape == (144, 192, 3)
    assert np.abs(plain - tiled).mean() < 0.5 and np.abs(plain - tiled).max() <= 8


def test_the_tile_chosen_for_a_memory_budget():
    names = [n for n, _ in VGGEncoder(["relu5_1"], resolve_weights("untrained")).stack.named_children()]
    model = memory.estimate_peak_bytes(2160, 3840, names, history_size=50)
    assert choose_tile(2160, 3840, names, budget_bytes=model["total"], halo=96) is None  # it fits whole
    tile = choose_tile(2160, 3840, names, budget_bytes=14 << 30, halo=96)
    assert tile is not None and tile % ALIGN == 0 and tile < 2160
    crop = min(2160, tile + 192), min(3840, tile + 192)
    need = (model["frame_tensors"] + model["lbfgs"] + memory.vgg_activation_bytes(*crop, names)
            + memory.transient_bytes(*crop))
    assert need <= 14 << 30
    with pytest.raises(ValueError, match=r"3840x2160 px needs at least \d+ MiB .* more than 1024 MiB"):
        choose_tile(2160, 3840, names, budget_bytes=1 << 30, halo=96)
    # A smaller history is what makes 4K fit a 10 GB budget.
    assert choose_tile(2160, 3840, names, budget_bytes=10 << 30, halo=96, history_size=5) is not None


@pytest.mark.parametrize("text, expected", [("4GB", 4 << 30), ("512MB", 512 << 20), ("2.5GiB", int(2.5 * 2**30)),
                                            ("1g", 1 << 30)])
def test_max_memory_sizes(text, expected):
    from videostyle.cli.main import _memory_size
    assert _memory_size(text) == expected


def test_a_bad_max_memory_is_one_line(capsys):
    from videostyle.cli.main import main
    with pytest.raises(SystemExit) as stop:
        main(["image", "a.png", "--style", "b.png", "--max-memory", "lots"])
    assert stop.value.code == 2
    assert "--max-memory: expected a size such as 4GB or 512MB, got 'lots'" in capsys.readouterr().err
