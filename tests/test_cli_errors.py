"""Bad input through the CLI: one clear line on stderr, exit status 2, nothing destroyed."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from common import full_disk_on_write, make_audio_only, make_clip, truncate_file
from common import decoded_rgb as _decoded
from PIL import Image

from videostyle.model import memory
from videostyle.cli.main import main


@pytest.fixture
def style(tmp_path):
    path = tmp_path / "style.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def _stylize(src, out, style, *extra):
    return main(["stylize", str(src), "--style", str(style), "-o", str(out), "--weights", "untrained",
                 "--size", "32", "--iters", "2", "--content-layers", "relu2_1", "--style-layers",
                 "relu1_1,relu2_1", "-q", *extra])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(root: Path) -> dict[str, str]:
    """Digest of every file under ``root``: to show that nothing finished was changed or deleted."""
    return {str(p.relative_to(root)): _digest(p) for p in sorted(root.rglob("*")) if p.is_file()}


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


def test_truncated_stream_stylises_what_decodes_and_warns_with_the_count(tmp_path, style, capsys):
    whole = make_clip(tmp_path / "whole.mkv", n_frames=12, audio=None)
    cut = truncate_file(whole, tmp_path / "cut.mkv", keep=0.6)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert _stylize(cut, tmp_path / "out.mp4", style) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"videostyle: warning: video {str(cut)!r} is damaged or truncated: decoded 4 frames (the file ended "
        f"at 0.167 s of the 0.500 s it states)"]
    assert len(_decoded(tmp_path / "out.mp4")) == 4


def test_bad_option_value_is_one_line(tmp_path, style, capsys):
    src = make_clip(tmp_path / "in.mp4", n_frames=2)
    assert _stylize(src, tmp_path / "out.mp4", style, "--size", "4") == 2
    assert capsys.readouterr().err.splitlines() == ["videostyle: error: --size must be at least 16 px, got 4"]


def _zero_frame_mkv(path: Path) -> Path:
    """An MKV whose video stream holds no frame at all (audio only is muxed)."""
    import av
    from fractions import Fraction
    from common import write_sine
    with av.open(str(path), "w", format="matroska") as out:
        video = out.add_stream("libx264", rate=24)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream("aac", rate=48000)
        audio.layout = "mono"
        audio.time_base = Fraction(1, 48000)
        write_sine(out, audio, Fraction(0), Fraction(1, 4), 1, phase=0)
    return path


def _wide_clip(path: Path, width: int, height: int = 8) -> Path:
    """A 2-frame lossless (FFV1) MKV of any width: libx264 cannot write one wider than 16384 px."""
    import av
    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream("ffv1", rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(2):
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 60 * i, np.uint8), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def test_zero_frames(tmp_path, style, capsys):
    src = _zero_frame_mkv(tmp_path / "empty.mkv")
    before = _digest(src)
    assert _stylize(src, tmp_path / "out.mp4", style) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"videostyle: error: no decodable video frame in {str(src)!r} (FFmpeg: the stream ended before any frame)"]
    assert _digest(src) == before and not (tmp_path / "out.mp4").exists()


def test_odd_size_is_cropped_to_even_and_stylised(tmp_path, style, capsys):
    src = make_clip(tmp_path / "odd.mp4", size=(63, 47), n_frames=2)
    assert _stylize(src, tmp_path / "out.mp4", style) == 0
    assert capsys.readouterr().err == ""
    assert [f.shape for f in _decoded(tmp_path / "out.mp4")] == [(46, 62, 3)] * 2


def test_too_wide_for_the_encoder_is_refused_before_work(tmp_path, style, capsys):
    src = _wide_clip(tmp_path / "wide.mkv", 16386)
    assert _stylize(src, tmp_path / "out.mp4", style) == 2
    assert capsys.readouterr().err.splitlines() == [
        "videostyle: error: video too large for the H.264 encoder: 16386x8 px output, at most 16384 px per side; "
        "use --output-size working (encode at the working size, --size)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["style.png", "wide.mkv"]  # no work dir


def test_frames_too_large_for_memory_are_refused_before_work(tmp_path, style, capsys, monkeypatch):
    src = make_clip(tmp_path / "in.mp4", n_frames=2)
    monkeypatch.setattr(memory, "available_memory", lambda: 100 << 20)
    assert _stylize(src, tmp_path / "out.mp4", style) == 2
    assert capsys.readouterr().err.splitlines() == [
        "videostyle: error: video frames too large for the memory available: 64x48 px source, 64x48 px output "
        "need about 0.5 GiB, 0.1 GiB available; use --output-size working or a smaller source"]
    assert not list(tmp_path.glob("*.videostyle-work"))


def test_working_size_too_small_for_the_layers(tmp_path, style, capsys):
    src = make_clip(tmp_path / "in.mp4", n_frames=2)
    assert main(["stylize", str(src), "--style", str(style), "-o", str(tmp_path / "out.mp4"),
                 "--weights", "untrained", "--size", "16", "-q"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "videostyle: error: working size 16x12 px is too small for layer relu5_1, which needs a short edge of "
        "at least 16 px; raise --size"]


def test_read_only_output_directory(tmp_path, style, capsys, monkeypatch):
    src = make_clip(tmp_path / "in.mp4", n_frames=2)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):  # root ignores the mode: fail the creation the way a read-only dir does
        def refuse(*args, **kwargs):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    try:
        assert _stylize(src, ro / "out.mp4", style) == 2
    finally:
        ro.chmod(0o755)
    assert capsys.readouterr().err.splitlines() == [
        f"videostyle: error: output directory is not writable: {str(ro)!r} (Permission denied)"]
    assert list(ro.iterdir()) == []


def test_unusable_work_dir(tmp_path, style, capsys):
    src = make_clip(tmp_path / "in.mp4", n_frames=2)
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file where a directory should be")
    assert _stylize(src, tmp_path / "out.mp4", style, "--workdir", str(blocker / "work")) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"videostyle: error: cannot use work dir {str(blocker / 'work')!r} (Not a directory); "
        f"choose another --workdir"]
    assert blocker.read_text() == "a file where a directory should be"


def test_disk_full_while_writing_frames_keeps_finished_frames(tmp_path, style, capsys, monkeypatch):
    from videostyle.store import workdir as journal
    src = make_clip(tmp_path / "in.mp4", n_frames=3)
    out, work = tmp_path / "out.mp4", tmp_path / "out.mp4.videostyle-work"
    assert _stylize(src, out, style, "--keep-workdir") == 0
    frame1 = work / "frames" / "000001.png"
    frame1.write_bytes(b"")  # frame 1 must be redone ...

    def full_disk(path, data, **kwargs):  # ... and its write hits a full disk (a planted link to
        if Path(path).name == "000001.png":  # /dev/full is removed, never written through: test_faults)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return journal.write_atomic(path, data, **kwargs)
    monkeypatch.setattr(journal, "_write_atomic", full_disk)
    def kept(tree):  # all but frame 1 and the journal, which the resume rewrites to list frame 0 only
        return {k: v for k, v in tree.items() if "000001" not in k and not k.endswith("journal.jsonl")}
    finished = kept(_tree(tmp_path))
    assert _stylize(src, out, style, "--keep-workdir") == 2
    assert capsys.readouterr().err.splitlines() == [
        f"videostyle: error: disk full while writing frame 1 to the work dir {str(work)!r} (No space left on "
        f"device); 1 finished frame kept: fix this, then resume with `videostyle resume {work}`"]
    assert kept(_tree(tmp_path)) == finished  # frame 0, the earlier output, the source: all untouched
    assert [line["index"] for line in map(json.loads, (work / "journal.jsonl").read_text().splitlines())] == [0]


def test_disk_full_while_encoding_keeps_the_frames(tmp_path, style, capsys, monkeypatch):
    src = make_clip(tmp_path / "in.mp4", n_frames=3)
    out, work = tmp_path / "out.mp4", tmp_path / "out.mp4.videostyle-work"
    disks = full_disk_on_write(monkeypatch, limit=2048)
    code = _stylize(src, out, style, "--crf", "0")
    for disk in disks:
        disk.close()
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"videostyle: error: disk full while writing {str(out)!r} (No space left on device); 3 stylised frames "
        f"kept in {str(work)!r}: fix this, then rerun the same command (or `videostyle resume {work}`) to "
        f"encode them"]
    assert len(list((work / "frames").glob("*.png"))) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "out.mp4.videostyle-work", "style.png"]


def test_audio_that_cannot_be_copied_is_transcoded(tmp_path, style, capsys):
    import av
    src = make_clip(tmp_path / "in.mov", n_frames=2, audio="pcm_s16le")  # PCM cannot go into MP4 as is
    assert _stylize(src, tmp_path / "out.mp4", style) == 0
    assert capsys.readouterr().err == ""
    with av.open(str(tmp_path / "out.mp4")) as container:
        assert [s.codec_context.name for s in container.streams.audio] == ["aac"]


def test_resume_of_a_missing_or_foreign_work_dir(tmp_path, capsys):
    assert main(["resume", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"videostyle: error: not a videostyle work dir: {str(tmp_path / 'nope')!r} does not exist"]
    assert main(["resume", str(tmp_path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"videostyle: error: not a videostyle work dir: {str(tmp_path)!r} has no manifest.json"]


def test_bad_batch_size(tmp_path, style, capsys):
    src = make_clip(tmp_path / "in.mp4", n_frames=2)
    assert _stylize(src, tmp_path / "out.mp4", style, "--batch-size", "0") == 2
    assert capsys.readouterr().err.splitlines() == ["videostyle: error: --batch-size must be at least 1, got 0"]
