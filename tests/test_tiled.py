"""Tiled evaluation (videostyle.model.tiled) gives the untiled objective's value and gradient."""

from __future__ import annotations

import pytest
import torch

from videostyle.model.features import VGGEncoder, resolve_weights
from videostyle.model.optimise import FrameObjective, LossWeights, TemporalTerm, compute_style_targets, stylize_frame
from videostyle.model import memory
from videostyle.model.memory import MIN_HISTORY, MemoryPlan, plan_memory, tiled_peak_bytes
from videostyle.model.tiled import TiledObjective
from videostyle.model.tiling import ALIGN, largest_crop, plan_tiles, receptive_radius, tile_grid

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
    # The gradients agree to float rounding (2.5e-7 relative);
    # L-BFGS without a line search amplifies that: measured 0.0008-0.002 on average, depending on the
    # order the sums are taken in.
    diff = (tiled.image - plain.image).abs()
    assert float(diff.mean()) < 3e-3 and float(diff.max()) < 0.1
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


def _stack(model="vgg19"):
    return [n for n, _ in VGGEncoder(["relu5_1"], resolve_weights("untrained", model)).stack.named_children()]


def test_the_memory_plan_for_a_budget():
    names = _stack()
    model = memory.estimate_peak_bytes(2160, 3840, names, history_size=50)
    assert plan_memory(2160, 3840, names, budget_bytes=model["total"], halo=96) == MemoryPlan(None, 50, model["total"])
    # 4K in a 16 GB GPU's budget: tiles, and all 50 pairs, since the tiles stay large.
    plan = plan_memory(2160, 3840, names, budget_bytes=14 << 30, halo=96)
    assert plan.tile is not None and plan.tile % ALIGN == 0 and plan.history == 50
    crop = largest_crop(2160, 3840, tile=plan.tile, halo=96)
    need = (model["frame_tensors"] + model["lbfgs"] + memory.vgg_activation_bytes(*crop, names)
            + memory.transient_bytes(*crop))
    assert need == plan.peak_bytes <= 14 << 30
    rows, cols = tile_grid(2160, 3840, plan.tile)
    assert rows * cols <= 12  # no finer than 1024 px tiles' grid
    # 1080p in 2.4 GB: 50 pairs alone would be 2.5 GB; fewer pairs keep 1024 px tiles' 2x2 grid.
    plan = plan_memory(1080, 1920, names, budget_bytes=int(2.4 * 2**30), halo=96)
    assert MIN_HISTORY < plan.history < 50 and tile_grid(1080, 1920, plan.tile) == (2, 2)
    assert plan.peak_bytes <= 2.4 * 2**30
    # Less: the fewest pairs, and the largest tile that fits with them.
    plan = plan_memory(1080, 1920, names, budget_bytes=1 << 30, halo=96)
    assert plan.history == MIN_HISTORY and tile_grid(1080, 1920, plan.tile) > (2, 2)
    assert plan.peak_bytes <= 1 << 30 < tiled_peak_bytes(1080, 1920, names, tile=plan.tile + 64, halo=96,
                                                         history_size=MIN_HISTORY)
    with pytest.raises(ValueError, match=r"3840x2160 px needs at least \d+ MiB .* more than 1024 MiB"):
        plan_memory(2160, 3840, names, budget_bytes=1 << 30, halo=96)


@pytest.mark.parametrize("text, expected", [("4GB", 4 << 30), ("512MB", 512 << 20), ("2.5GiB", int(2.5 * 2**30)),
                                            ("1g", 1 << 30)])
def test_max_memory_sizes(text, expected):
    from videostyle.cli.main import _memory_size
    assert _memory_size(text) == expected


@pytest.mark.parametrize("text, expected", [("96", 96), ("bands", "bands"), (" Bands", "bands")])
def test_tile_values(text, expected):
    from videostyle.cli.main import _tile
    assert _tile(text) == expected


def test_a_bad_tile_is_one_line(capsys):
    from videostyle.cli.main import main
    for bad in ("0", "strips"):
        with pytest.raises(SystemExit) as stop:
            main(["image", "a.png", "--style", "b.png", "--tile", bad])
        assert stop.value.code == 2
        assert f"--tile: expected px (1 or more) or 'bands', got '{bad}'" in capsys.readouterr().err


def test_a_bad_max_memory_is_one_line(capsys):
    from videostyle.cli.main import main
    with pytest.raises(SystemExit) as stop:
        main(["image", "a.png", "--style", "b.png", "--max-memory", "lots"])
    assert stop.value.code == 2
    assert "--max-memory: expected a size such as 4GB or 512MB, got 'lots'" in capsys.readouterr().err


def test_a_large_style_image_gives_the_same_gram_matrices_from_tiles():
    """compute_style_targets tiles an image longer than FEATURE_PASS_TILE px (a 1920 px style image
    whole took 1.9 GB): the same Gram matrices, to float rounding, as the whole image."""
    from videostyle.model import losses
    from videostyle.model.tiling import FEATURE_PASS_TILE, tiled_grams

    encoder = VGGEncoder([*STYLE], resolve_weights("untrained"))
    g = torch.Generator().manual_seed(1)
    image = torch.nn.functional.interpolate(torch.rand((1, 3, 13, 21), generator=g), size=(200, 328),
                                            mode="bicubic").clamp(0, 1)
    with torch.no_grad():
        feats = encoder(image)
        whole = {layer: losses.gram(feats[layer]) for layer in STYLE}
    tiled = tiled_grams(encoder, image, list(STYLE), tile=96)  # 3x4 tiles, ragged at the edges
    for layer in STYLE:
        assert tiled[layer].shape == whole[layer].shape
        assert float((tiled[layer] - whole[layer]).norm() / whole[layer].norm()) < 1e-5, layer
    # The rule is fixed (not the memory budget), so a resumed run computes the same targets.
    big = torch.rand((1, 3, 64, FEATURE_PASS_TILE + 16), generator=g)
    a = compute_style_targets(encoder, [big], [1.0], list(STYLE)).grams
    b = compute_style_targets(encoder, [big], [1.0], list(STYLE)).grams
    assert all(torch.equal(a[layer], b[layer]) for layer in STYLE)


class _Stylizer:
    def __init__(self, tile, history):
        from types import SimpleNamespace
        self.cfg, self.tile, self.history = SimpleNamespace(lbfgs_history=50), tile, history


@pytest.mark.parametrize("planned", [224, memory.BANDS])
@pytest.mark.parametrize("forced_tile", [None, 48])
def test_a_resume_keeps_the_memory_plan_the_run_started_with(tmp_path, forced_tile, planned):
    """The first run records its tile (or bands) and L-BFGS pairs; a resume keeps the pairs always (they
    change pixels) and the tile unless --tile is given, whatever the memory free now would plan."""
    from videostyle.config import RunOptions
    from videostyle.run.chain import _keep_memory_plan
    from videostyle.store.workdir import WorkDir

    with WorkDir.open(tmp_path / "w", {"config_hash": "x"}) as work:
        _keep_memory_plan(work, _Stylizer(tile=planned, history=7), RunOptions())
    assert WorkDir.read_manifest(tmp_path / "w")["tile"] == planned
    assert WorkDir.read_manifest(tmp_path / "w")["lbfgs_pairs"] == 7
    # What plan_memory gives at the resume: more memory is free (untiled, all 50 pairs), or --tile.
    now = _Stylizer(tile=forced_tile, history=50)
    with WorkDir.open(tmp_path / "w", {"config_hash": "x"}) as work:
        _keep_memory_plan(work, now, RunOptions(tile=forced_tile))
    assert now.history == 7 and now.tile == (planned if forced_tile is None else forced_tile)
    assert WorkDir.read_manifest(tmp_path / "w")["tile"] == now.tile


def test_a_work_dir_from_before_the_memory_plan_resumes_with_the_configs_pairs(tmp_path):
    from videostyle.config import RunOptions
    from videostyle.run.chain import _keep_memory_plan
    from videostyle.store.workdir import WorkDir

    with WorkDir.open(tmp_path / "w", {"config_hash": "x"}) as work:
        work.update_manifest(tile=None)  # what 0.3's runs recorded
    now = _Stylizer(tile=320, history=9)
    with WorkDir.open(tmp_path / "w", {"config_hash": "x"}) as work:
        _keep_memory_plan(work, now, RunOptions())
    assert (now.tile, now.history) == (None, 50)


def test_fewer_lbfgs_pairs_are_announced(caplog, monkeypatch):
    """A plan that lowers the history says so in one line (it changes the result); tiles alone are
    only logged at -v."""
    import logging

    from videostyle.config import StyleConfig
    from videostyle.step import Stylizer

    monkeypatch.setattr(memory, "plan_memory", lambda *a, **k: MemoryPlan(1072, 12, 1 << 30))
    stylizer = Stylizer.__new__(Stylizer)
    stylizer.cfg, stylizer.device, stylizer.precision = StyleConfig(styles=("s.png",)), torch.device("cpu"), "fp32"
    stylizer.encoder = VGGEncoder(["relu1_1"], resolve_weights("untrained"))
    with caplog.at_level(logging.INFO, logger="videostyle.step"):
        stylizer.plan_memory((1920, 1080), max_memory=8 << 30)
    assert (stylizer.tile, stylizer.history) == (1072, 12)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["1920x1080 px frames: L-BFGS keeps 12 correction pairs instead of 50, to fit the memory "
                        f"({warnings[0].split('(')[1]}"]
    assert any("2x2 tiles" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


def test_a_max_memory_below_what_the_process_holds_is_one_line():
    from videostyle.config import StyleConfig
    from videostyle.errors import InputError
    from videostyle.step import Stylizer

    stylizer = Stylizer.__new__(Stylizer)
    stylizer.cfg, stylizer.device, stylizer.precision = StyleConfig(styles=("s.png",)), torch.device("cpu"), "fp32"
    stylizer.encoder = VGGEncoder(["relu1_1"], resolve_weights("untrained"))
    with pytest.raises(InputError, match=r"^--max-memory 0\.01 GiB leaves nothing for 1920x1080 px frames: "
                                         r"torch, .* already take \d+\.\d\d GiB; raise it$"):
        stylizer.plan_memory((1920, 1080), max_memory=10 << 20)


def test_the_frame_budget_is_what_max_memory_leaves(monkeypatch):
    """--max-memory is the run's peak: on the CPU, what the process holds now and the video's buffers
    come off, and the untiled and tiled estimates must fit the rest divided by the CPU's measured
    peak-over-model factor (the banded one was fitted to the measured peak)."""
    from videostyle.step import CPU_PEAK_OVER_MODEL, frame_memory_budget, peak_over_model

    monkeypatch.setattr(memory, "resident_memory", lambda: 1 << 30)
    budget = frame_memory_budget(torch.device("cpu"), int(2.5 * 2**30), reserve=256 << 20)
    assert budget == int(2.5 * 2**30) - (1 << 30) - (256 << 20)
    assert peak_over_model(torch.device("cpu")) == CPU_PEAK_OVER_MODEL > 1
    monkeypatch.setattr(memory, "available_memory", lambda: 10 << 30)
    assert frame_memory_budget(torch.device("cpu")) == 6 << 30  # 60% of what is available
    names = _stack()
    whole = memory.estimate_peak_bytes(1080, 1920, names, history_size=50)["total"]
    assert memory.plan_memory(1080, 1920, names, budget_bytes=whole, halo=96, overhead=1.15).tile is not None
    assert memory.plan_memory(1080, 1920, names, budget_bytes=int(whole * 1.15) + 1, halo=96,
                              overhead=1.15).tile is None


def test_on_a_gpu_the_frame_budget_leaves_room_for_the_allocator(monkeypatch):
    """On a GPU, what torch has allocated and the buffers come off --max-memory, and the plan keeps the
    measured peak-over-model factor's room (a 4K plan for 16 GiB ran out of memory under a 16 GiB cap)."""
    from videostyle.step import CUDA_PEAK_OVER_MODEL, frame_memory_budget, peak_over_model

    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1 << 30)
    budget = frame_memory_budget(torch.device("cuda", 0), 16 << 30, reserve=256 << 20)
    assert budget == (16 << 30) - (1 << 30) - (256 << 20)
    assert peak_over_model(torch.device("cuda", 0)) == CUDA_PEAK_OVER_MODEL > 1


class _FakeCuda:
    """torch.cuda's calls that bound_memory makes, on a pretend 80 GiB device 1."""

    def __init__(self, monkeypatch):
        self.fractions = []
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            lambda index: type("Props", (), {"total_memory": 80 << 30})())
        monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                            lambda fraction, index: self.fractions.append((fraction, index)))
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)


def test_max_memory_bounds_the_gpu_allocator_and_glibc(monkeypatch):
    """--max-memory holds as the peak: on a GPU the allocator's share of the device is set to it (so cuDNN
    cannot take the free memory for workspace); on the CPU glibc returns large freed blocks at once.
    Nothing changes without the option."""
    from videostyle.step import bound_memory

    cuda = _FakeCuda(monkeypatch)
    released = []
    monkeypatch.setattr(memory, "return_freed_memory_at_once", lambda: released.append(True))
    bound_memory(torch.device("cuda"), 16 << 30)
    bound_memory(torch.device("cuda", 0), 200 << 30)  # more than the device has: the whole device
    bound_memory(torch.device("cuda"), None)
    assert cuda.fractions == [(0.2, 1), (1.0, 0)] and released == []
    bound_memory(torch.device("cpu"), 16 << 30)
    bound_memory(torch.device("cpu"), None)
    assert released == [True] and len(cuda.fractions) == 2


def test_planning_a_gpu_run_caps_its_allocator(monkeypatch):
    from videostyle.config import StyleConfig
    from videostyle.step import Stylizer

    cuda = _FakeCuda(monkeypatch)
    stylizer = Stylizer.__new__(Stylizer)
    stylizer.cfg, stylizer.device, stylizer.precision = StyleConfig(styles=("s.png",)), torch.device("cuda"), "fp32"
    stylizer.encoder = VGGEncoder(["relu1_1", "relu5_1"], resolve_weights("untrained"))
    stylizer.plan_memory((3840, 2160), max_memory=16 << 30)
    assert cuda.fractions == [(0.2, 1)]
    assert stylizer.tile is not None  # 4K does not fit 16 GiB untiled
