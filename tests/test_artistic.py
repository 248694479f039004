"""Artistic controls (issue 7): every flag is in --help and reaches the optimiser; colour preservation,
masks, --save-every and `videostyle preview`.

Images are tiny (64x48), weights untrained and seeded, a few L-BFGS iterations: each test takes seconds.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from common import make_clip
from PIL import Image

from videostyle.model import colour, losses
from videostyle import images
from videostyle.run import api
from videostyle import step
from videostyle.cli.main import _style_config, build_parser, main
from videostyle.config import StyleConfig
from videostyle.media.decode import iter_frames
from videostyle.media.probe import probe_video

SMALL = ["--weights", "untrained", "--size", "64"]
# Where the layer choice does not matter: a VGG truncated after relu3_1 costs a fraction of the full one.
SHALLOW = ["--content-layers", "relu2_1", "--style-layers", "relu1_1,relu2_1,relu3_1"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A colourful content photo, two different styles."""
    root = tmp_path_factory.mktemp("art")
    yy, xx = np.mgrid[0:48, 0:64]
    content = np.stack([xx * 4, yy * 5, 255 - xx * 3], axis=-1).clip(0, 255).astype(np.uint8)
    content[16:32, 20:44] = (40, 160, 60)
    Image.fromarray(content).save(root / "content.png")
    stripes = np.zeros((48, 48, 3), np.uint8)
    stripes[..., 0] = np.where(((xx[:, :48] + yy[:, :48]) // 4) % 2 == 0, 230, 30)
    stripes[..., 2] = np.where(((xx[:, :48] - yy[:, :48]) // 6) % 2 == 0, 200, 40)
    Image.fromarray(stripes).save(root / "stripes.png")
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / "noise.png")
    return root


def _cfg(files: Path, *argv: str, command: str = "image", styles: str = "stripes.png"):
    """The StyleConfig the CLI builds from ``argv`` (the path every flag takes to the optimiser)."""
    style = ",".join(str(files / s) for s in styles.split(","))
    args = build_parser().parse_args([command, str(files / "content.png"), "--style", style, *SMALL, *argv])
    return _style_config(args, video=command != "image")


def _run(files: Path, tmp_path: Path, *argv: str, styles: str = "stripes.png"):
    """``videostyle image`` with ``argv`` through the Python API: (final losses, output (H, W, 3) uint8)."""
    out = tmp_path / f"out{len(list(tmp_path.glob('out*.png')))}.png"
    result = api.stylize_image(files / "content.png", out, _cfg(files, *argv, styles=styles))
    return result, images.load_image(out)


def _content(files: Path) -> np.ndarray:
    return images.load_image(files / "content.png")  # already 64x48: the working size


# --- every flag is offered and reaches the optimiser -----------------------------------------------

STYLE_FLAGS = ["--style", "--style-weights", "--style-scale", "--iters", "--content-weight", "--style-weight",
               "--tv-weight", "--content-layers", "--style-layers", "--pooling", "--preserve-colors", "--mask",
               "--mask-feather"]
VIDEO_FLAGS = ["--passes", "--pass-blend", "--pass-iters"]


@pytest.mark.parametrize("command,expected", [
    ("stylize", STYLE_FLAGS + VIDEO_FLAGS + ["--save-every", "--size"]),
    ("image", STYLE_FLAGS + ["--save-every", "--size"]),
    ("webcam", STYLE_FLAGS + VIDEO_FLAGS + ["--style-size"]),
    ("preview", STYLE_FLAGS + ["--at", "--size"]),
    ("sheet", STYLE_FLAGS + ["--at", "--size"]),
])
def test_help_lists_every_artistic_flag(command, expected, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    missing = [flag for flag in expected if f"{flag} " not in text and f"{flag}\n" not in text]
    assert not missing, f"{command} --help lacks {missing}"
    if command in ("stylize", "image"):
        assert "OUTPUT_STEM.iter_NNNN.png" in " ".join(text.split())


@pytest.mark.slow
def test_content_and_style_weight_scale_their_terms(files, tmp_path):
    # Zero iterations from a seeded noise image: the terms are those of the same image.
    base, _ = _run(files, tmp_path, "--iters", "0", "--init-first", "noise")
    doubled, _ = _run(files, tmp_path, "--iters", "0", "--init-first", "noise", "--content-weight", "2",
                      "--style-weight", str(3 * StyleConfig.style_weight))
    assert doubled["content"] == pytest.approx(2 * base["content"], rel=1e-5)
    assert doubled["style"] == pytest.approx(3 * base["style"], rel=1e-5)
    assert base["content"] > 0 and base["style"] > 0


@pytest.mark.slow
def test_higher_tv_weight_gives_smoother_result(files, tmp_path):
    _, rough = _run(files, tmp_path, "--iters", "15", "--style", str(files / "noise.png"), *SHALLOW)
    result, smooth = _run(files, tmp_path, "--iters", "15", "--tv-weight", "200", "--style", str(files / "noise.png"),
                          *SHALLOW)
    assert "tv" in result

    def tv(rgb):
        return float(losses.total_variation(images.to_tensor(rgb)))
    assert tv(smooth) < 0.7 * tv(rough)


def test_style_scale_changes_the_style_targets(files):
    grams = {}
    for scale in ("1", "0.5"):
        cfg = _cfg(files, "--style-scale", scale)
        grams[scale] = step.Stylizer(cfg, device=torch.device("cpu"), working_size=(64, 48)).targets.grams
    assert not torch.allclose(grams["1"]["relu1_1"], grams["0.5"]["relu1_1"], rtol=1e-3)


@pytest.mark.slow
def test_pooling_max_changes_the_losses(files, tmp_path):
    avg, _ = _run(files, tmp_path, "--iters", "0", "--init-first", "noise")
    mx, _ = _run(files, tmp_path, "--iters", "0", "--init-first", "noise", "--pooling", "max")
    assert mx["style"] != pytest.approx(avg["style"], rel=1e-3)
    stylizer = step.Stylizer(_cfg(files, "--pooling", "max"), device=torch.device("cpu"), working_size=(64, 48))
    assert isinstance(stylizer.encoder.stack.pool1, torch.nn.MaxPool2d)


@pytest.mark.slow
def test_content_layers_choose_the_content_layer(files, tmp_path):
    cfg = _cfg(files, "--content-layers", "relu3_1")
    stylizer = step.Stylizer(cfg, device=torch.device("cpu"), working_size=(64, 48))
    assert stylizer.loss_weights.content_layers == {"relu3_1": 1.0}
    default, _ = _run(files, tmp_path, "--iters", "0", "--init-first", "noise")
    shallow, _ = _run(files, tmp_path, "--iters", "0", "--init-first", "noise", "--content-layers", "relu3_1")
    assert shallow["content"] != pytest.approx(default["content"], rel=1e-3)


def test_style_layer_weights_reach_the_loss(files, tmp_path):
    one, _ = _run(files, tmp_path, "--iters", "0", "--init-first", "noise", "--style-layers", "relu1_1")
    zeroed, _ = _run(files, tmp_path, "--iters", "0", "--init-first", "noise", "--style-layers",
                     "relu1_1:1,relu2_1:0")
    both, _ = _run(files, tmp_path, "--iters", "0", "--init-first", "noise", "--style-layers",
                   "relu1_1:1,relu2_1:1")
    assert zeroed["style"] == pytest.approx(one["style"], rel=1e-6)
    assert both["style"] != pytest.approx(one["style"], rel=1e-3)


@pytest.mark.slow
def test_style_blend_one_zero_equals_the_single_style_through_the_cli(files, tmp_path):
    single, single_rgb = _run(files, tmp_path, "--iters", "5", *SHALLOW)
    blend, blend_rgb = _run(files, tmp_path, "--iters", "5", "--style-weights", "1,0", *SHALLOW,
                            styles="stripes.png,noise.png")
    half, _ = _run(files, tmp_path, "--iters", "5", "--style-weights", "1,1", *SHALLOW, styles="stripes.png,noise.png")
    assert blend == single and np.array_equal(blend_rgb, single_rgb)
    assert half["style"] != pytest.approx(single["style"], rel=1e-3)


# --- colour preservation ----------------------------------------------------------------------------

def _yiq(rgb: np.ndarray) -> np.ndarray:
    return colour.rgb_to_yiq(images.to_tensor(rgb))[0].numpy()


# Saving as 8-bit moves I and Q by at most (0.596 + 0.274 + 0.322) * 0.5 / 255 = 0.0023.
CHROMA_TOL = 0.0025


@pytest.mark.slow
def test_preserve_colors_keeps_the_content_chroma_and_changes_luminance(files, tmp_path):
    result, rgb = _run(files, tmp_path, "--iters", "12", "--preserve-colors", *SHALLOW)
    _, plain = _run(files, tmp_path, "--iters", "12", *SHALLOW)
    out, src = _yiq(rgb), _yiq(_content(files))
    assert np.abs(out[1:] - src[1:]).max() <= CHROMA_TOL
    assert np.abs(out[0] - src[0]).mean() > 0.02  # stylised luminance
    assert np.abs(_yiq(plain)[1:] - src[1:]).mean() > 5 * np.abs(out[1:] - src[1:]).mean()


def test_colour_round_trip_and_luminance_matching():
    rgb = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(colour.yiq_to_rgb(colour.rgb_to_yiq(rgb)), rgb, atol=1e-6)
    y = colour.luminance(rgb)
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 0], y[:, 2])
    style = colour.luminance(torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(1))) * 0.3
    matched = colour.match_luminance(style, y)
    assert float(matched.mean()) == pytest.approx(float(y.mean()), abs=0.02)
    assert float(matched.std()) == pytest.approx(float(y.std()), rel=0.1)


@pytest.mark.slow
def test_preserve_colors_video_keeps_every_frames_chroma(files, tmp_path):
    clip = make_clip(tmp_path / "in.mp4", n_frames=3, fps=12)
    assert main(["stylize", str(clip), "--style", str(files / "stripes.png"), "-o", str(tmp_path / "o.mp4"),
                 "--keep-workdir", "--output-size", "working", "--iters", "8,4", "--preserve-colors",
                 "-q", *SMALL, *SHALLOW]) == 0
    sources = [images.resize_rgb(f.rgb, (64, 48)) for f in iter_frames(probe_video(clip))]
    frames = sorted((tmp_path / "o.mp4.videostyle-work" / "frames").glob("*.png"))
    assert len(frames) == 3
    for path, src in zip(frames, sources):
        out, ref = _yiq(images.load_image(path)), _yiq(src)
        assert np.abs(out[1:] - ref[1:]).max() <= CHROMA_TOL, path.name
        assert np.abs(out[0] - ref[0]).mean() > 0.01, path.name


# --- masks ------------------------------------------------------------------------------------------

def _half_mask(path: Path, *, white_from: int = 32) -> Path:
    mask = np.zeros((48, 64), np.uint8)
    mask[:, white_from:] = 255
    Image.fromarray(mask).save(path)
    return path


@pytest.mark.slow
def test_masked_out_pixels_are_unchanged_and_masked_in_pixels_change(files, tmp_path):
    mask = _half_mask(tmp_path / "mask.png")
    _, rgb = _run(files, tmp_path, "--iters", "10", "--mask", str(mask), "--mask-feather", "2")
    src = _content(files)
    # Feathered by sigma 2 px: the kernel reaches 3 sigma = 6 px into the black half.
    assert np.array_equal(rgb[:, :32 - 7], src[:, :32 - 7])
    assert np.abs(rgb[:, 32 + 7:].astype(int) - src[:, 32 + 7:]).mean() > 5
    edge = np.abs(rgb[:, 28:36].astype(int) - src[:, 28:36]).mean(axis=(0, 2))
    assert np.all(np.diff(edge[1:-1]) >= -1)  # a soft ramp from kept to stylised


def _write_mask_video(path: Path, masks: list[np.ndarray]) -> Path:
    """Greyscale masks ``(48, 64)`` uint8 as a lossless (FFV1) Matroska video."""
    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream("ffv1", rate=12)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "gray"
        for m in masks:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(m, format="gray")))
        out.mux(stream.encode(None))
    return path


@pytest.mark.slow
def test_video_mask_gives_frame_t_for_frame_t_and_holds_its_last_frame(files, tmp_path):
    clip = make_clip(tmp_path / "in.mp4", n_frames=4, fps=12)
    left, right = np.zeros((48, 64), np.uint8), np.zeros((48, 64), np.uint8)
    left[:, :24] = 255
    right[:, 40:] = 255
    mask = _write_mask_video(tmp_path / "mask.mkv", [left, right])  # shorter than the clip: held
    assert main(["stylize", str(clip), "--style", str(files / "stripes.png"), "-o", str(tmp_path / "o.mp4"),
                 "--keep-workdir", "--output-size", "working", "--iters", "8,4", "--mask", str(mask),
                 "--mask-feather", "1", "-q", *SMALL]) == 0
    sources = [images.resize_rgb(f.rgb, (64, 48)) for f in iter_frames(probe_video(clip))]
    frames = sorted((tmp_path / "o.mp4.videostyle-work" / "frames").glob("*.png"))
    for t, (path, src) in enumerate(zip(frames, sources, strict=True)):
        out = images.load_image(path)
        if t == 0:
            kept, changed = np.s_[:, 28:], np.s_[:, :20]
        else:
            kept, changed = np.s_[:, :36], np.s_[:, 44:]
        assert np.array_equal(out[kept], src[kept]), t
        assert np.abs(out[changed].astype(int) - src[changed]).mean() > 3, t


def test_bad_mask_gives_one_line_and_exit_2(files, tmp_path, capsys):
    clip = make_clip(tmp_path / "in.mp4", n_frames=2, fps=12)
    base = ["stylize", str(clip), "--style", str(files / "stripes.png"), "-o", str(tmp_path / "o.mp4"), "-q", *SMALL]
    missing = tmp_path / "nomask.png"
    assert main([*base, "--mask", str(missing)]) == 2
    assert capsys.readouterr().err.splitlines() == [f"videostyle: error: mask not found: {str(missing)!r}"]
    text = tmp_path / "mask.txt"
    text.write_text("not a mask\n")
    assert main([*base, "--mask", str(text)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"videostyle: error: cannot read mask {str(text)!r}: expected a greyscale image or a video "
        f"(not a video file: {str(text)!r} (FFmpeg: Invalid data found when processing input))"]
    assert not (tmp_path / "o.mp4").exists() and not list(tmp_path.glob("*.videostyle-work"))


@pytest.mark.slow
def test_mask_file_is_part_of_the_resume_fingerprint(files, tmp_path, capsys):
    clip = make_clip(tmp_path / "in.mp4", n_frames=2, fps=12)
    mask = _half_mask(tmp_path / "mask.png")
    argv = ["stylize", str(clip), "--style", str(files / "stripes.png"), "-o", str(tmp_path / "o.mp4"),
            "--iters", "2", "--mask", str(mask), "--keep-workdir", "-q", *SMALL]
    assert main(argv) == 0
    _half_mask(mask, white_from=16)  # same path, other contents
    assert main(argv) == 2
    assert "the mask differs" in capsys.readouterr().err


# --- --save-every and preview ----------------------------------------------------------------------

@pytest.mark.slow
def test_save_every_writes_the_first_frame_every_n_iterations(files, tmp_path):
    out = tmp_path / "photo.png"
    assert main(["image", str(files / "content.png"), "--style", str(files / "stripes.png"), "-o", str(out),
                 "--iters", "6", "--save-every", "2", "-q", *SMALL, *SHALLOW]) == 0
    shots = sorted(tmp_path.glob("photo.iter_*.png"))
    assert [p.name for p in shots] == ["photo.iter_0002.png", "photo.iter_0004.png", "photo.iter_0006.png"]
    pictures = [images.load_image(p) for p in shots]
    assert not np.array_equal(pictures[0], pictures[1]) and not np.array_equal(pictures[1], pictures[2])
    assert np.array_equal(pictures[2], images.load_image(out))  # the last one is the result

    clip = make_clip(tmp_path / "in.mp4", n_frames=2, fps=12)
    assert main(["stylize", str(clip), "--style", str(files / "stripes.png"), "-o", str(tmp_path / "clip.mp4"),
                 "--iters", "3,2", "--save-every", "3", "-q", *SMALL, *SHALLOW]) == 0
    assert [p.name for p in tmp_path.glob("clip.iter_*.png")] == ["clip.iter_0003.png"]


@pytest.mark.slow
def test_preview_stylises_one_frame_and_prints_the_stylize_command(files, tmp_path, capsys):
    clip = make_clip(tmp_path / "in.mp4", n_frames=12, fps=12)
    out = tmp_path / "p.png"
    argv = ["preview", str(clip), "--style", str(files / "stripes.png"), "--at", "0.5", "-o", str(out),
            "--iters", "4", "--octaves", "1", "--style-weight", "50", "--preserve-colors", *SMALL, *SHALLOW]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"wrote {out}: frame at 0.500 s stylised in ")
    command = shlex.split(lines[-1])
    assert command[:3] == ["videostyle", "stylize", str(clip)]
    rebuilt = _style_config(build_parser().parse_args(command[1:]), video=False)
    assert rebuilt == _style_config(build_parser().parse_args(argv), video=False)
    rgb = images.load_image(out)
    assert rgb.shape == (48, 64, 3)
    # the frame at 0.5 s is frame 6: its chroma is kept (preserve colours), its luminance is not
    source = [f.rgb for f in iter_frames(probe_video(clip))][6]
    assert np.abs(_yiq(rgb)[1:] - _yiq(source)[1:]).max() <= CHROMA_TOL


def test_preview_refuses_a_time_beyond_the_end(files, tmp_path, capsys):
    clip = make_clip(tmp_path / "in.mp4", n_frames=12, fps=12)
    assert main(["preview", str(clip), "--style", str(files / "stripes.png"), "--at", "5", "-o",
                 str(tmp_path / "p.png"), *SMALL]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"videostyle: error: --at 5 s is beyond the end of {str(clip)!r} (1.000 s long)"]
