"""Bad input through the CLI: one clear line on stderr, exit status 2, nothing destroyed."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest
from clips import make_audio_only, make_clip, truncate_file
from PIL import Image

from videostyle.cli import main


@pytest.fixture
def style(tmp_path):
    path = tmp_path / "style.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def _stylize(src, out, style, *extra):
    return main(["stylize", str(src), "--style", str(style), "-o", str(out), "--weights", "untrained",
                 "--size", "32", "--iters", "2", "-q", *extra])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    text = tmp / "notes.txt"
    text.write_text("hello, this is not a video\n")
    noise = tmp / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    png = tmp / "still.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(png)
    audio = make_audio_only(tmp / "song.m4a")
    truncated = truncate_file(make_clip(tmp / "whole.mp4", n_frames=8), tmp / "cut.mp4", keep=0.5)
    return {
        "missing": (tmp / "nope.mp4", f"video file not found: {str(tmp / 'nope.mp4')!r}"),
        "text": (text, f"not a video file: {str(text)!r} (FFmpeg: Invalid data found when processing input)"),
        "random_bytes": (noise, f"not a video file: {str(noise)!r} (FFmpeg: Invalid data found when "
                                f"processing input)"),
        "image_as_video": (png, f"expected a video, got a still image: {str(png)!r} (format png_pipe, codec png)"),
        "no_video_stream": (audio, f"no video stream in {str(audio)!r} (streams found: audio aac)"),
        "truncated_mp4": (truncated, f"truncated video file (no MP4 index): {str(truncated)!r} "
                                     f"(FFmpeg: moov atom not found)"),
    }


@pytest.mark.parametrize("case", ["missing", "text", "random_bytes", "image_as_video", "no_video_stream",
                                  "truncated_mp4"])
def test_bad_input_file_gives_one_line_and_exit_2(tmp_path, style, capsys, case):
    src, message = _bad_inputs(tmp_path)[case]
    before = _digest(src) if src.exists() else None
    assert _stylize(src, tmp_path / "out.mp4", style) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"videostyle: error: {message}"]
    assert "Traceback" not in err
    assert not (tmp_path / "out.mp4").exists()
    assert (_digest(src) if src.exists() else None) == before


@pytest.mark.parametrize("case", ["same_as_input", "missing_dir", "bad_extension"])
def test_bad_output_is_refused_before_any_work(tmp_path, style, capsys, case):
    src = make_clip(tmp_path / "in.mp4", n_frames=3)
    before = _digest(src)
    out, message = {
        "same_as_input": (src, f"output path is the input video: {str(src)!r} (writing it would destroy "
                               f"the input)"),
        "missing_dir": (tmp_path / "nowhere" / "out.mp4",
                        f"output directory does not exist: {str(tmp_path / 'nowhere')!r}"),
        "bad_extension": (tmp_path / "out.avi", f"unsupported output extension '.avi' in "
                                                f"{str(tmp_path / 'out.avi')!r}: expected one of .mp4, .m4v, "
                                                f".mov, .mkv"),
    }[case]
    assert _stylize(src, out, style) == 2
    assert capsys.readouterr().err.splitlines() == [f"videostyle: error: {message}"]
    assert _digest(src) == before
    assert not list(tmp_path.glob("*.videostyle-work"))  # refused before a work dir was made


def test_missing_style_image(tmp_path, capsys):
    src = make_clip(tmp_path / "in.mp4", n_frames=2)
    assert _stylize(src, tmp_path / "out.mp4", tmp_path / "nostyle.jpg") == 2
    assert capsys.readouterr().err.splitlines() == [
        f"videostyle: error: style image not found: {str(tmp_path / 'nostyle.jpg')!r}"]


def test_disk_space_is_checked_before_work_starts(tmp_path, style, capsys, monkeypatch):
    import shutil
    src = make_clip(tmp_path / "in.mp4", n_frames=3)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    assert _stylize(src, tmp_path / "out.mp4", style) == 2
    line = capsys.readouterr().err.splitlines()[0]
    assert line.startswith(f"videostyle: error: not enough disk space for the work dir in {str(tmp_path)!r}: "
                           f"about 0.1 GiB needed for 3 frames, 0.0 GiB free")


def test_truncated_stream_stylises_what_decodes_and_warns(tmp_path, style, capsys):
    whole = make_clip(tmp_path / "whole.mkv", n_frames=12, audio=None)
    cut = truncate_file(whole, tmp_path / "cut.mkv", keep=0.6)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert _stylize(cut, tmp_path / "out.mp4", style) == 0
    err = capsys.readouterr().err
    assert "videostyle: warning:" in err
    assert (tmp_path / "out.mp4").exists()


def test_bad_option_value_is_one_line(tmp_path, style, capsys):
    src = make_clip(tmp_path / "in.mp4", n_frames=2)
    assert _stylize(src, tmp_path / "out.mp4", style, "--size", "4") == 2
    assert capsys.readouterr().err.splitlines() == ["videostyle: error: --size must be at least 16 px, got 4"]
