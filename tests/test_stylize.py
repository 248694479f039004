"""End to end: the CLI on tiny clips built here, checked by decoding what it wrote."""

from __future__ import annotations

import av
import numpy as np
import pytest
from common import identify_frame, make_clip, make_clip_with_data_stream, make_recording
from PIL import Image

from videostyle.cli.main import main
from videostyle.images import load_image
from videostyle.media.probe import probe_video


@pytest.fixture(scope="module")
def style_png(tmp_path_factory):
    """Bold diagonal colour stripes: a style far from the grey test clips."""
    yy, xx = np.mgrid[0:48, 0:48]
    rgb = np.zeros((48, 48, 3), np.uint8)
    rgb[..., 0] = np.where(((xx + yy) // 4) % 2 == 0, 230, 30)
    rgb[..., 2] = np.where(((xx - yy) // 6) % 2 == 0, 200, 40)
    path = tmp_path_factory.mktemp("style") / "stripes.png"
    Image.fromarray(rgb).save(path)
    return path


def _stylize(src, out, style, *extra):
    args = ["stylize", str(src), "--style", str(style), "-o", str(out), "--weights", "untrained",
            "--size", "32", "--iters", "3,2", "-q", *extra]
    assert main(args) == 0


def _video_frames(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [(f.pts * stream.time_base, f.to_ndarray(format="rgb24")) for f in container.decode(stream)]
    return frames


def _stream_seconds(path, kind):
    with av.open(str(path)) as container:
        stream = getattr(container.streams, kind)[0]
        return float(stream.duration * stream.time_base)


@pytest.mark.slow
def test_stylized_clip_keeps_frame_count_timestamps_size_and_audio(tmp_path, style_png):
    src = make_clip(tmp_path / "in.mp4", n_frames=8, fps=24)
    out = tmp_path / "out.mp4"
    _stylize(src, out, style_png)
    source_times = [t for t, _ in _video_frames(src)]
    output = _video_frames(out)
    assert len(output) == len(source_times) == 8
    for (t_out, rgb), t_src in zip(output, source_times):
        assert abs(float(t_out - t_src)) < 1 / 24  # within one frame
        assert rgb.shape == (48, 64, 3)  # source size kept
    assert abs(_stream_seconds(out, "audio") - _stream_seconds(src, "audio")) < 0.05
    with av.open(str(out)) as container:
        assert container.streams.audio[0].codec_context.name == "aac"
    assert not (tmp_path / "out.mp4.videostyle-work").exists()  # removed after a successful encode


@pytest.mark.slow
def test_output_is_stylised_not_a_copy(tmp_path, style_png):
    src = make_clip(tmp_path / "in.mp4", n_frames=2, fps=24, audio=None)
    out = tmp_path / "out.mp4"
    _stylize(src, out, style_png, "--iters", "30,5")
    (_, before), (_, after) = _video_frames(src)[0], _video_frames(out)[0]
    assert np.abs(before.astype(int) - after.astype(int)).mean() > 10


@pytest.mark.slow
def test_variable_frame_rate_timestamps_survive(tmp_path, style_png):
    src = make_clip(tmp_path / "vfr.mp4", n_frames=8, vfr=True)
    out = tmp_path / "out.mp4"
    _stylize(src, out, style_png, "--init", "content", "--temporal-weight", "0")
    src_times = [float(t) for t, _ in _video_frames(src)]
    out_times = [float(t) for t, _ in _video_frames(out)]
    assert len(out_times) == len(src_times)
    np.testing.assert_allclose(out_times, src_times, atol=1e-3)
    assert len(set(np.round(np.diff(src_times), 4))) > 1  # really variable


def test_rotated_phone_clip_comes_out_upright(tmp_path, style_png):
    src = make_clip(tmp_path / "rot.mp4", size=(64, 48), n_frames=3, rotation=-90)
    out = tmp_path / "out.mp4"
    # 0 iterations: the output is the (resized) content itself, so orientation can be read off exactly.
    _stylize(src, out, style_png, "--iters", "0")
    info = probe_video(out)
    assert (info.width, info.height, info.rotation) == (48, 64, 0)
    _, rgb = _video_frames(out)[0]
    top, bottom = rgb[:4].astype(int), rgb[-4:].astype(int)
    assert (top[..., 0] - top[..., 1]).mean() > 80  # the red bar drawn on the upright top edge
    assert abs((bottom[..., 0] - bottom[..., 1]).mean()) < 30


@pytest.mark.slow
def test_frame_order_is_kept(tmp_path, style_png):
    src = make_clip(tmp_path / "in.mp4", n_frames=6, audio=None)
    out = tmp_path / "out.mp4"
    _stylize(src, out, style_png, "--iters", "0", "--size", "64")
    assert [identify_frame(rgb, 6) for _, rgb in _video_frames(out)] == list(range(6))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["odd_size", "no_audio", "pcm_in_mov"])
def test_awkward_inputs_encode(tmp_path, style_png, kind):
    if kind == "odd_size":
        src = make_clip(tmp_path / "odd.mp4", size=(65, 49), n_frames=3)
    elif kind == "no_audio":
        src = make_clip(tmp_path / "silent.mp4", n_frames=3, audio=None)
    else:
        src = make_clip(tmp_path / "pcm.mov", n_frames=3, audio="pcm_s16le")
    out = tmp_path / "out.mp4"
    _stylize(src, out, style_png)
    frames = _video_frames(out)
    assert len(frames) == 3 and frames[0][1].shape[0] % 2 == 0 and frames[0][1].shape[1] % 2 == 0
    with av.open(str(out)) as container:
        codecs = [s.codec_context.name for s in container.streams.audio]
    assert codecs == ([] if kind == "no_audio" else ["aac"])
    if kind == "pcm_in_mov":
        assert abs(_stream_seconds(out, "audio") - _stream_seconds(src, "audio")) < 0.05


@pytest.mark.slow
def test_image_command_writes_png_of_requested_size(tmp_path, style_png):
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "photo_out.png"
    assert main(["image", str(photo), "--style", str(style_png), "-o", str(out), "--weights", "untrained",
                 "--size", "40", "--iters", "5", "-q", "--output-size", "working"]) == 0
    assert load_image(out).shape == (26, 40, 3)  # long edge 40, aspect 2:3 kept, even sizes


def test_image_at_the_source_size_is_refined_there_with_a_progress_bar(tmp_path, style_png, capsys):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (75, 130, 3), dtype=np.uint8)).save(photo)
    common = ["--style", str(style_png), "--weights", "untrained", "--size", "32", "--iters", "4",
              "--octaves", "1"]
    plain, refined = tmp_path / "plain.png", tmp_path / "refined.png"
    assert main(["image", str(photo), "-o", str(plain), *common, "--refine-iters", "0", "-q"]) == 0
    assert main(["image", str(photo), "-o", str(refined), *common, "--refine-iters", "3"]) == 0
    assert load_image(plain).shape == load_image(refined).shape == (75, 130, 3)  # odd sizes kept
    # Refined at 64x36 and 130x75 (the source) from the upscale: not the plain bicubic upscale.
    assert np.abs(load_image(plain).astype(int) - load_image(refined)).mean() > 1
    err = capsys.readouterr().err
    assert "10/10 [" in err  # 4 iterations at 32 px, then 3 at each of the two larger sizes
    assert "it/s" in err or "s/it" in err


def test_image_progress_counts_every_octave(tmp_path, style_png, capsys):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 256, 3), dtype=np.uint8)).save(photo)
    assert main(["image", str(photo), "--style", str(style_png), "-o", str(tmp_path / "o.png"), "--weights",
                 "untrained", "--size", "256", "--iters", "3", "--octaves", "2"]) == 0
    assert "6/6 [" in capsys.readouterr().err  # 3 at 128x64, 3 at 256x128; no upscale: already the source size


def test_progress_bar_shows_frames_and_eta_unless_quiet(tmp_path, style_png, capsys):
    src = make_clip(tmp_path / "in.mp4", n_frames=3, audio=None)
    assert main(["stylize", str(src), "--style", str(style_png), "-o", str(tmp_path / "a.mp4"),
                 "--weights", "untrained", "--size", "32", "--iters", "1"]) == 0
    err = capsys.readouterr().err
    assert "3/3" in err and "frame" in err
    assert main(["stylize", str(src), "--style", str(style_png), "-o", str(tmp_path / "b.mp4"),
                 "--weights", "untrained", "--size", "32", "--iters", "1", "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_dropped_data_streams_are_named_in_one_line(tmp_path, style_png, capsys):
    src = make_clip_with_data_stream(tmp_path / "gopro.mp4")
    assert probe_video(src).other_streams == ("#1 data (bin_data, GoPro MET)",)
    _stylize(src, tmp_path / "out.mp4", style_png)
    notes = [line for line in capsys.readouterr().err.splitlines() if "not copied" in line]
    assert notes == ["videostyle: note: 1 stream of the source is not copied to the output (only the video "
                     "and audio are): #1 data (bin_data, GoPro MET)"]
    with av.open(str(tmp_path / "out.mp4")) as container:
        assert [s.type for s in container.streams] == ["video"]
    _stylize(make_clip(tmp_path / "plain.mp4", n_frames=2), tmp_path / "plain_out.mp4", style_png)
    assert "not copied" not in capsys.readouterr().err


def test_progress_bar_shows_an_estimated_total_without_a_container_duration(tmp_path, style_png, capsys):
    src = make_recording(tmp_path / "live.webm", video_codec="libx264", container="matroska", n_frames=5,
                         live=True)
    assert main(["stylize", str(src), "--style", str(style_png), "-o", str(tmp_path / "a.mp4"),
                 "--weights", "untrained", "--size", "32", "--iters", "0"]) == 0
    err = capsys.readouterr().err
    assert "5/~5 [" in err  # frames done / estimated total, with an ETA
    assert "<~" in err


def test_refine_sizes_double_then_end_at_the_source_size():
    from videostyle.model.upscale import refine_sizes
    assert refine_sizes((32, 18), (130, 75)) == [(64, 36), (130, 75)]
    assert refine_sizes((512, 384), (4032, 3024)) == [(1024, 768), (2048, 1536), (4032, 3024)]
    assert refine_sizes((40, 26), (40, 26)) == [] and refine_sizes((512, 340), (300, 200)) == []


def test_a_short_estimate_grows_with_the_frames_done(capsys):
    from videostyle.cli.main import _progress_factory
    from videostyle.run.plan import EstimatedCount
    bar = _progress_factory(False)(total=EstimatedCount(3), initial=0)
    for _ in range(5):
        bar.update(1)
    bar.close()
    assert bar.total == 5
    assert "5/~5 [" in capsys.readouterr().err  # not tqdm's "5/?" once the estimate is passed


def test_progress_bar_counts_the_first_frames_iterations(tmp_path, style_png, capsys):
    """A first frame takes minutes on a CPU: the bar shows its iterations (every octave), not a frozen 0."""
    src = make_clip(tmp_path / "in.mp4", n_frames=3, audio=None)
    assert main(["stylize", str(src), "--style", str(style_png), "-o", str(tmp_path / "o.mp4"),
                 "--weights", "untrained", "--size", "32", "--iters", "10,2", "--octaves", "1"]) == 0
    err = capsys.readouterr().err
    assert "frame 0: iteration 5/10" in err and "frame 0: iteration 10/10" in err
    assert "frame 1: iteration" not in err  # warm-started frames: the bar counts frames
