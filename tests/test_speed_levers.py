"""The speed levers of issue 6: --quality presets, coarse-to-fine octaves, --precision, the frame writer
thread, and the video loop's skipped final evaluation. Their speed is measured by scripts/bench.py;
here: that each one reaches the optimiser and keeps the results right."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from videostyle.cli import main as cli
from videostyle.cli.main import main
from videostyle.model import features, optimise
from videostyle.config import QUALITY_PRESETS, StyleConfig
from videostyle.errors import OutputError
from videostyle.store.frame_writer import FrameWriter
from videostyle.store.workdir import WorkDir
from videostyle.step import Stylizer

STYLE_LAYERS = {"relu1_1": 0.5, "relu2_1": 0.5}


def _config(args: list[str]) -> StyleConfig:
    parsed = cli.build_parser().parse_args(["stylize", "in.mp4", "--style", __file__, *args])
    return cli._style_config(parsed, video=True)


@pytest.mark.parametrize("quality", list(QUALITY_PRESETS))
def test_quality_preset_sets_size_iterations_and_octaves(quality):
    cfg = _config(["--quality", quality])
    preset = QUALITY_PRESETS[quality]
    assert (cfg.size, cfg.iters_first, cfg.iters, cfg.octaves) == (
        preset["size"], preset["iters_first"], preset["iters"], preset["octaves"])


def test_explicit_flags_override_the_preset_and_the_default_is_the_default_preset():
    cfg = _config(["--quality", "high", "--iters", "7,3", "--octaves", "1"])
    assert (cfg.size, cfg.iters_first, cfg.iters, cfg.octaves) == (QUALITY_PRESETS["high"]["size"], 7, 3, 1)
    assert _config(["--size", "200"]).size == 200
    default = _config([])
    assert (default.size, default.iters_first, default.iters, default.octaves) == (
        StyleConfig(styles=("s",)).size, StyleConfig(styles=("s",)).iters_first,
        StyleConfig(styles=("s",)).iters, StyleConfig(styles=("s",)).octaves)


def test_speed_flags_are_documented_in_help(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["stylize", "--help"])
    out = capsys.readouterr().out
    for flag in ("--quality", "--octaves", "--precision"):
        assert flag in out


def _stylizer(octaves: int, size=(160, 160)) -> tuple[Stylizer, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    content = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 16, generator=g), size=size,
                                              mode="bicubic").clamp(0, 1)
    cfg = StyleConfig(styles=(__file__,), weights="untrained", octaves=octaves,
                      content_layers=(("relu2_1", 1.0),), style_layers=tuple(STYLE_LAYERS.items()))
    stylizer = Stylizer.__new__(Stylizer)  # the style image is a tensor here, not a file
    stylizer.cfg, stylizer.device, stylizer.tile, stylizer.history = cfg, torch.device("cpu"), None, cfg.lbfgs_history
    stylizer.loss_weights = optimise.LossWeights(1.0, 20.0, 0.0, {"relu2_1": 1.0}, STYLE_LAYERS)
    stylizer.encoder = features.VGGEncoder(["relu2_1", *STYLE_LAYERS], features.resolve_weights("untrained"))
    style = (torch.rand(1, 3, 64, 64, generator=g) > 0.5).float()
    stylizer.targets = optimise.compute_style_targets(stylizer.encoder, [style], [1.0], list(STYLE_LAYERS))
    return stylizer, content


def test_octaves_run_coarse_levels_first_and_reach_a_lower_loss_for_the_same_full_size_steps():
    one, content = _stylizer(1)
    two, _ = _stylizer(2)
    flat = one.stylize(content, content, iterations=6)
    c2f = two.stylize(content, content, iterations=6)
    assert len(flat.history) == 6 and len(c2f.history) == 12  # 6 at 80x80, then 6 at 160x160
    assert c2f.image.shape == content.shape
    assert c2f.losses["total"] < flat.losses["total"]


def test_a_warm_started_frame_is_optimised_at_full_size_only():
    two, content = _stylizer(2)
    warm = two.stylize(content, content, iterations=6, warm_started=True)
    assert len(warm.history) == 6 and warm.image.shape == content.shape


@pytest.mark.parametrize("init, expected", [("prev-warped-inside", [False, True, True, True]),
                                            ("content", [False] * 4)])
def test_video_frames_get_octaves_only_when_optimised_from_scratch(tmp_path, monkeypatch, init, expected):
    from common import make_clip
    from PIL import Image

    from videostyle import step
    from videostyle.cli.main import main

    clip = make_clip(tmp_path / "in.mp4", n_frames=4, audio=None)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "s.png")
    real, calls = step.Stylizer.stylize, []

    def stylise(self, *args, warm_started=False, **kwargs):
        calls.append(warm_started)
        return real(self, *args, warm_started=warm_started, **kwargs)

    monkeypatch.setattr(step.Stylizer, "stylize", stylise)
    assert main(["stylize", str(clip), "--style", str(tmp_path / "s.png"), "-o", str(tmp_path / "o.mp4"),
                 "--weights", "untrained", "--size", "32", "--iters", "2,1", "--octaves", "2", "--init", init,
                 "--content-layers", "relu2_1", "--style-layers", "relu1_1", "-q"]) == 0
    assert calls == expected


def test_octaves_below_the_minimum_size_fall_back_to_full_size_only():
    assert optimise.octave_sizes(192, 256, 3) == [(96, 128), (192, 256)]  # 48x64 is below 64 px
    assert optimise.octave_sizes(40, 40, 2) == [(40, 40)]


def test_video_loop_skips_the_final_evaluation_and_reports_the_last_iteration():
    stylizer, content = _stylizer(1)
    calls = []

    class Counted(optimise.FrameObjective):  # counts the objective's evaluations
        def __call__(self, image):
            calls.append(1)
            return super().__call__(image)

    objective = counted = Counted(stylizer.encoder, content, stylizer.targets, stylizer.loss_weights)
    result = optimise.stylize_frame(counted, content, iterations=4, evaluate_result=False)
    assert len(calls) == 4 and result.losses["total"] == result.history[-1]
    calls.clear()
    result = optimise.stylize_frame(counted, content, iterations=4)
    assert len(calls) == 5  # the returned, clamped image is evaluated once more
    assert result.losses["total"] == pytest.approx(float(objective(result.image)[0]))


def test_bf16_precision_gives_float32_features_close_to_fp32():
    weights = features.resolve_weights("untrained")
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    full = features.VGGEncoder(["relu3_1"], weights)(image)["relu3_1"]
    half = features.VGGEncoder(["relu3_1"], weights, precision="bf16")(image)["relu3_1"]
    assert half.dtype == torch.float32 and not torch.equal(half, full)
    assert float((half - full).norm() / full.norm()) < 0.05
    with pytest.raises(ValueError, match="--precision must be one of fp32, bf16, fp16"):
        features.VGGEncoder(["relu3_1"], weights, precision="int8")


@pytest.mark.parametrize("loss_scale", [1.0, 1e-4, 1e-7])
def test_fp16_gradients_do_not_underflow(loss_scale):
    """The losses' gradients at the features are tiny; an fp16 backward flushed them to zero (on an H200
    the frame stayed the photo). The scaled backward gives fp32's gradient for losses of any size; without
    it all three cases fail here (CPU autocast, untrained weights: their gradients are smaller still)."""
    weights = features.resolve_weights("untrained")
    layers = ["relu1_1", "relu3_1", "relu5_1"]
    image = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    grads = {}
    for precision in ("fp32", "fp16"):
        x = image.clone().requires_grad_(True)
        feats = features.VGGEncoder(layers, weights, precision=precision)(x)
        assert all(f.dtype == torch.float32 for f in feats.values())
        (sum(f.pow(2).mean() for f in feats.values()) * loss_scale).backward()
        grads[precision] = x.grad
    assert float((grads["fp16"] == 0).float().mean()) < 0.001
    unit = {precision: (g / g.norm()).flatten() for precision, g in grads.items()}  # cosine_similarity's eps
    assert float(unit["fp16"] @ unit["fp32"]) > 0.999                                 # is 1e-8: too large here
    assert float(grads["fp16"].norm() / grads["fp32"].norm()) == pytest.approx(1.0, abs=0.01)


def _workdir(tmp_path) -> WorkDir:
    return WorkDir.open(tmp_path / "w", {"config_hash": "x"})


def _frame(i: int) -> tuple[int, int, np.ndarray]:
    return i, 10 * i, np.full((4, 6, 3), i, np.uint8)


def test_frame_writer_journals_every_submitted_frame_in_order(tmp_path):
    work = _workdir(tmp_path)
    written = []
    with FrameWriter(work, after_write=lambda index, pts, rgb: written.append(index)) as writer:
        writer.submit([_frame(0), _frame(1)])
        writer.submit([])
        writer.submit([_frame(2)])
    assert written == [0, 1, 2] and work.finished_count == 3
    assert [work.entries[i].pts for i in range(3)] == [0, 10, 20]
    np.testing.assert_array_equal(work.read_frame(2), _frame(2)[2])
    work.close()  # the lock: one open work dir at a time
    reopened = WorkDir.open(tmp_path / "w", {"config_hash": "x"})
    assert reopened.finished_count == 3


def test_frame_writer_error_reaches_the_optimiser_and_later_frames_are_not_written(tmp_path, monkeypatch):
    work = _workdir(tmp_path)
    real_write = work.write_frame

    def write_frame(index, pts, rgb):
        if index == 1:
            raise OutputError("disk full while writing frame 1")
        real_write(index, pts, rgb)

    monkeypatch.setattr(work, "write_frame", write_frame)
    writer = FrameWriter(work)
    writer.submit([_frame(0), _frame(1), _frame(2)])
    with pytest.raises(OutputError, match="disk full while writing frame 1"):
        writer.flush()
    with pytest.raises(OutputError):
        writer.submit([_frame(3)])  # it stays failed: the journal must stay a prefix
    with pytest.raises(OutputError):
        writer.close()
    assert sorted(work.entries) == [0]  # frame 2 came after the failure: not written
    assert not work.frame_path(2).exists()


@pytest.mark.parametrize("cut_at, fresh", [(None, [0]), (3, [0, 3])])
def test_a_scene_cut_starts_the_chain_afresh(tmp_path, monkeypatch, cut_at, fresh):
    """At a hard cut the other shot must not be the warm start (its ghost would stay): the frame starts
    from its own content with the first frame's iterations and octaves, and no temporal term."""
    from common import make_clip
    from PIL import Image

    from videostyle import step
    from videostyle.cli.main import main

    clip = make_clip(tmp_path / "in.mp4", size=(96, 64), n_frames=6, cut_at=cut_at, audio=None)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "s.png")
    real, calls = step.Stylizer.stylize, []

    def stylise(self, target, init, *, iterations, temporal=(), warm_started=False, **kwargs):
        calls.append((iterations, warm_started, len(temporal), torch.equal(init, target)))
        return real(self, target, init, iterations=iterations, temporal=temporal, warm_started=warm_started,
                    **kwargs)

    monkeypatch.setattr(step.Stylizer, "stylize", stylise)
    assert main(["stylize", str(clip), "--style", str(tmp_path / "s.png"), "-o", str(tmp_path / "o.mp4"),
                 "--weights", "untrained", "--size", "48", "--iters", "3,1", "--octaves", "2",
                 "--content-layers", "relu2_1", "--style-layers", "relu1_1", "-q"]) == 0
    assert [i for i, call in enumerate(calls) if call == (3, False, 0, True)] == fresh  # content init
    assert all(call == (1, True, 1, False) for i, call in enumerate(calls) if i not in fresh)
