"""`stylize --start/--duration`: only part of the video, its audio cut to match, timestamps from zero."""

from __future__ import annotations

import shlex
from fractions import Fraction

import av
import numpy as np
import pytest
from common import decoded_audio_span, decoded_times, first_sound_s, identify_frame, make_clip
from PIL import Image

from videostyle.cli.main import build_parser, main
from videostyle.errors import InputError
from videostyle.tools.preview import stylize_command
from videostyle.config import StyleConfig
from videostyle.media.decode import iter_frames
from videostyle.media.probe import parse_time, probe_video, with_cut

FPS = 24
N = 48  # 2 s
AUDIO_TOLERANCE_S = 0.05  # one AAC packet is 21 ms


@pytest.fixture(scope="module")
def style_png(tmp_path_factory):
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[::4] = (230, 40, 200)
    path = tmp_path_factory.mktemp("style") / "stripes.png"
    Image.fromarray(rgb).save(path)
    return path


def _stylize(src, out, style, *extra, code=0):
    # 0 iterations: frame 0 is its content frame, so the test can tell which source frame it is.
    args = ["stylize", str(src), "--style", str(style), "-o", str(out), "--weights", "untrained",
            "--size", "32", "--iters", "0", "-q", *extra]
    assert main(args) == code


@pytest.mark.parametrize("text, seconds", [("90", 90.0), ("1.5", 1.5), ("1:30", 90.0), ("01:02:03.25", 3723.25),
                                           ("0:00:00.5", 0.5)])
def test_parse_time_accepts_seconds_minutes_and_hours(text, seconds):
    assert parse_time(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "-1", "1:75", "a", "1::2", "1:2:3:4", "1e3"])
def test_parse_time_refuses_other_text(text):
    with pytest.raises(ValueError, match="SS, MM:SS or HH:MM:SS"):
        parse_time(text)


def test_decode_of_a_cut_yields_its_frames_indexed_from_zero(tmp_path):
    info = with_cut(probe_video(make_clip(tmp_path / "c.mp4", n_frames=N, fps=FPS, audio=None)), 0.5, 0.25)
    frames = list(iter_frames(info))
    assert [f.index for f in frames] == list(range(6))
    assert [identify_frame(f.rgb, N) for f in frames] == list(range(12, 18))


@pytest.mark.parametrize("name, codec", [("a.mp4", "aac"), ("a.mov", "pcm_s16le")])
def test_cut_gives_its_frames_from_zero_with_audio_in_sync(tmp_path, style_png, name, codec):
    # The sound starts at 0.75 s in the source: 0.25 s into a cut from 0.5 s, whether copied or transcoded.
    src = make_clip(tmp_path / name, n_frames=N, fps=FPS, audio=codec, audio_start_s=0.75)
    out = tmp_path / "out.mp4"
    _stylize(src, out, style_png, "--start", "0.5", "--duration", "1")
    times = decoded_times(out)
    assert len(times) == 24  # frames 12..35, pts in [0.5, 1.5)
    assert times == pytest.approx([i / FPS for i in range(24)], abs=1e-3)
    with av.open(str(out)) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert identify_frame(first, N, drawn_size=None) == 12
    assert first_sound_s(out) == pytest.approx(0.25, abs=0.01)
    codec_out, start, end = decoded_audio_span(out)
    assert codec_out == "aac"
    assert start == pytest.approx(0.25, abs=AUDIO_TOLERANCE_S)
    assert end == pytest.approx(1.0, abs=AUDIO_TOLERANCE_S)


def test_cut_to_the_end_and_a_cut_past_the_end(tmp_path, style_png):
    src = make_clip(tmp_path / "a.mp4", n_frames=N, fps=FPS)
    _stylize(src, tmp_path / "tail.mp4", style_png, "--start", "0:01.5")
    assert len(decoded_times(tmp_path / "tail.mp4")) == 12
    assert decoded_audio_span(tmp_path / "tail.mp4")[2] == pytest.approx(0.5, abs=AUDIO_TOLERANCE_S)
    with pytest.raises(InputError, match=r"--start 5 s is at or past the end .* \(2.000 s long\)"):
        with_cut(probe_video(src), 5.0)


def test_the_cut_is_part_of_the_run_a_resume_must_match(tmp_path, style_png, capsys):
    src = make_clip(tmp_path / "a.mp4", n_frames=N, fps=FPS, audio=None)
    out, work = tmp_path / "out.mp4", tmp_path / "work"
    _stylize(src, out, style_png, "--start", "0.5", "--duration", "0.5", "--workdir", str(work), "--keep-workdir")
    assert len(list((work / "frames").glob("*.png"))) == 12
    _stylize(src, out, style_png, "--start", "1", "--workdir", str(work), code=2)
    assert "the part of the video (--start/--duration)" in capsys.readouterr().err
    out.unlink()
    assert main(["resume", str(work), "-q"]) == 0  # the manifest's cut, no flags
    assert len(decoded_times(out)) == 12


def test_cut_works_with_passes(tmp_path, style_png):
    src = make_clip(tmp_path / "a.mp4", n_frames=N, fps=FPS)
    out = tmp_path / "out.mp4"
    _stylize(src, out, style_png, "--start", "1", "--duration", "0.25", "--passes", "2", "--pass-iters", "1")
    assert decoded_times(out) == pytest.approx([i / FPS for i in range(6)], abs=1e-3)


def test_cut_with_ray_is_one_clear_line(tmp_path, style_png, capsys):
    src = make_clip(tmp_path / "a.mp4", n_frames=8, audio=None)
    _stylize(src, tmp_path / "o.mp4", style_png, "--start", "0.1", "--ray", code=2)
    err = capsys.readouterr().err.strip()
    assert err == ("videostyle: error: --start/--duration do not work with --ray yet: stylise the part in one "
                   "process (drop --ray) or cut the video first")


def test_preview_prints_a_stylize_command_with_an_output(tmp_path):
    cfg = StyleConfig(styles=(str(tmp_path / "s.png"),), size=96, iters_first=4, iters=4)
    command = stylize_command(tmp_path / "clip.mp4", cfg, output=tmp_path / "clip_s.mp4")
    argv = shlex.split(command)
    assert argv[:2] == ["videostyle", "stylize"]
    args = build_parser().parse_args(argv[1:])
    assert (args.output, args.size, args.iters) == (str(tmp_path / "clip_s.mp4"), 96, (4, 4))
