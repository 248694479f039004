"""Video I/O: probe, decode, encode on tiny clips written with PyAV inside tmp_path.

Each test checks one behaviour on real files: frame order and timestamps, rotation, odd sizes,
audio kept/transcoded/in sync, and one clear error line for each bad input or output.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from common import (
    first_sound_s,
    frame_pattern,
    full_disk_on_write,
    identify_frame,
    make_audio_only,
    make_clip,
    make_recording,
    truncate_file,
    vfr_times,
)

from videostyle.errors import InputError, OutputError
from videostyle.media.decode import (FramePrefetcher, SourceFrame, TruncatedVideoWarning, _PtsFixer,
                                     estimate_frame_count, iter_frames)
from videostyle.media.encode import check_output_path, encode_video
from videostyle.media.probe import probe_video

FPS = 24
N = 8
AUDIO_TOLERANCE_S = 0.050  # audio duration kept within 50 ms (AAC frames are 21 ms at 48 kHz)
TIME_TOLERANCE_S = 0.001  # pts survive a round trip to well under a millisecond


def _round_trip(src: Path, out: Path, **encode_kwargs):
    """Decode ``src``, encode every frame unchanged to ``out``; return (source info, output info)."""
    info = probe_video(src)
    encode_video(
        ((f.rgb, f.pts) for f in iter_frames(info)),
        output_path=out,
        time_base=info.time_base,
        source=info,
        preset="ultrafast",
        **encode_kwargs,
    )
    return info, probe_video(out)


def _times(info) -> list[float]:
    return [f.time_s for f in iter_frames(info)]


# --- probe -------------------------------------------------------------------------------------


def test_probe_reports_size_timing_and_audio(tmp_path):
    info = probe_video(make_clip(tmp_path / "a.mp4", n_frames=N, fps=FPS))
    assert (info.width, info.height, info.rotation) == (64, 48, 0)
    assert info.frame_count == N
    assert info.average_rate == FPS
    assert info.duration_s == pytest.approx(N / FPS, abs=TIME_TOLERANCE_S)
    (audio,) = info.audio
    assert (audio.codec, audio.sample_rate, audio.channels, audio.language, audio.copyable) == (
        "aac",
        48000,
        2,
        "eng",
        True,
    )


def test_probe_mkv_has_no_frame_count(tmp_path):
    info = probe_video(make_clip(tmp_path / "a.mkv"))
    assert info.frame_count is None
    assert sum(1 for _ in iter_frames(info)) == N


# --- decode ------------------------------------------------------------------------------------


def test_decode_yields_every_frame_in_order_with_source_times(tmp_path):
    info = probe_video(make_clip(tmp_path / "a.mp4", n_frames=N, fps=FPS))
    frames = list(iter_frames(info))
    assert [f.index for f in frames] == list(range(N))
    assert [identify_frame(f.rgb, N) for f in frames] == list(range(N))
    for f in frames:
        assert f.rgb.shape == (48, 64, 3) and f.rgb.dtype == np.uint8
        assert f.time_s == pytest.approx(float(f.pts * info.time_base))
        assert f.time_s == pytest.approx(f.index / FPS, abs=TIME_TOLERANCE_S)


def test_decode_start_skips_frames_but_keeps_index_and_pts(tmp_path):
    info = probe_video(make_clip(tmp_path / "a.mp4"))
    full = list(iter_frames(info))
    tail = list(iter_frames(info, start=5))
    assert [(f.index, f.pts) for f in tail] == [(f.index, f.pts) for f in full[5:]]
    assert np.array_equal(tail[0].rgb, full[5].rgb)


def test_vfr_clip_keeps_its_irregular_timestamps(tmp_path):
    info = probe_video(make_clip(tmp_path / "vfr.mp4", vfr=True))
    assert _times(info) == pytest.approx([float(t) for t in vfr_times(N)], abs=TIME_TOLERANCE_S)


def test_raw_h264_without_timestamps_gets_increasing_synthesised_pts(tmp_path):
    info = probe_video(make_clip(tmp_path / "raw.h264", audio=None))
    frames = list(iter_frames(info))
    assert info.frame_count is None and len(frames) == N
    step = info.frame_step
    assert [f.pts for f in frames] == [i * step for i in range(N)]
    assert [identify_frame(f.rgb, N) for f in frames] == list(range(N))


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotated_clip_decodes_upright_with_swapped_size(tmp_path, rotation):
    info = probe_video(make_clip(tmp_path / "rot.mp4", size=(64, 48), rotation=rotation))
    assert info.rotation == rotation % 360
    expected_size = (48, 64) if rotation % 180 else (64, 48)
    assert (info.width, info.height) == expected_size
    frames = list(iter_frames(info))
    for f in frames:
        assert f.rgb.shape == (expected_size[1], expected_size[0], 3)
    # Upright pattern: red bar along the top rows, frames in order.
    assert frames[0].rgb[0, :, 0].mean() > 150 and frames[0].rgb[-1, :, 0].mean() < 150
    assert [identify_frame(f.rgb, N) for f in frames] == list(range(N))


def test_odd_size_clip_decodes_to_even_size_and_encodes(tmp_path):
    info, out = _round_trip(make_clip(tmp_path / "odd.mp4", size=(65, 49)), tmp_path / "out.mp4")
    assert (info.coded_width, info.coded_height) == (65, 49)
    assert (info.width, info.height) == (64, 48)
    frames = list(iter_frames(info))
    assert all(f.rgb.shape == (48, 64, 3) for f in frames)
    assert [identify_frame(f.rgb, N, drawn_size=(65, 49)) for f in frames] == list(range(N))
    assert (out.width, out.height, out.frame_count) == (64, 48, N)


def test_truncated_mp4_with_index_decodes_part_and_warns(tmp_path):
    whole = make_clip(tmp_path / "whole.mp4", size=(128, 96), n_frames=24, faststart=True)
    info = probe_video(truncate_file(whole, tmp_path / "cut.mp4", keep=0.5))
    with pytest.warns(TruncatedVideoWarning, match=r"decoded \d+ frames of 24 expected") as record:
        frames = list(iter_frames(info))
    assert 0 < len(frames) < 24
    assert f"decoded {len(frames)} frames" in str(record[0].message)
    assert [identify_frame(f.rgb, 24) for f in frames] == list(range(len(frames)))


def test_truncated_mkv_decodes_part_and_warns(tmp_path):
    whole = make_clip(tmp_path / "whole.mkv", size=(128, 96), n_frames=24)
    info = probe_video(truncate_file(whole, tmp_path / "cut.mkv", keep=0.5))
    with pytest.warns(TruncatedVideoWarning, match="the file ended at"):
        frames = list(iter_frames(info))
    assert 0 < len(frames) < 24


def test_intact_clip_decodes_without_warning(tmp_path):
    info = probe_video(make_clip(tmp_path / "a.mkv"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(list(iter_frames(info))) == N


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ([None, None, None], [0, 10, 20]),  # no timestamps at all: nominal rate
        ([0, 0, 20, 30], [0, 10, 20, 30]),  # a repeated pts, then back on the source's clock
        ([0, 30, 20, 40], [0, 30, 40, 50]),  # going back in time
        ([5, None, 25], [5, 15, 25]),  # one missing
    ],
)
def test_pts_fixer_makes_pts_strictly_increasing(raw, expected):
    fix = _PtsFixer(first=0, step=10)
    assert [fix(p) for p in raw] == expected


# --- prefetcher --------------------------------------------------------------------------------


def test_prefetcher_yields_the_same_frames(tmp_path):
    info = probe_video(make_clip(tmp_path / "a.mp4"))
    with FramePrefetcher(iter_frames(info), depth=2) as frames:
        got = [(f.index, f.pts) for f in frames]
    assert got == [(f.index, f.pts) for f in iter_frames(info)]


def test_prefetcher_reraises_producer_error_in_consumer():
    def frames():
        yield SourceFrame(0, 0, 0.0, np.zeros((2, 2, 3), np.uint8))
        raise InputError("boom")

    with FramePrefetcher(frames()) as prefetcher:
        assert next(prefetcher).index == 0
        with pytest.raises(InputError, match="boom"):
            next(prefetcher)


def test_prefetcher_close_stops_thread_early_and_bounds_queue():
    produced = []
    closed = threading.Event()

    def frames():
        try:
            for i in range(10_000):
                produced.append(i)
                yield SourceFrame(i, i, float(i), np.zeros((2, 2, 3), np.uint8))
        finally:
            closed.set()

    prefetcher = FramePrefetcher(frames(), depth=3)
    assert next(prefetcher).index == 0
    time.sleep(0.2)  # let the producer fill the queue
    assert len(produced) <= 1 + 3 + 1  # consumed + queued + one waiting to be queued
    prefetcher.close()  # returns (a hang would time the test out); how fast is scripts/ business
    assert closed.is_set()
    assert list(prefetcher) == []


# --- encode ------------------------------------------------------------------------------------


def test_round_trip_keeps_frames_timing_and_audio(tmp_path):
    info, out = _round_trip(make_clip(tmp_path / "a.mp4", n_frames=N, fps=FPS), tmp_path / "out.mp4")
    assert out.frame_count == N
    assert (out.width, out.height, out.rotation) == (info.width, info.height, 0)
    assert _times(out) == pytest.approx(_times(info), abs=TIME_TOLERANCE_S)
    assert out.duration_s == pytest.approx(info.duration_s, abs=TIME_TOLERANCE_S)
    assert [identify_frame(f.rgb, N) for f in iter_frames(out)] == list(range(N))
    (audio,) = out.audio
    assert audio.codec == "aac" and audio.language == "eng"
    assert audio.duration_s == pytest.approx(info.audio[0].duration_s, abs=AUDIO_TOLERANCE_S)


@pytest.mark.parametrize("ext", [".mov", ".mkv"])
def test_encode_other_containers_by_extension(tmp_path, ext):
    info, out = _round_trip(make_clip(tmp_path / "vfr.mp4", vfr=True), tmp_path / f"out{ext}")
    assert out.codec == "h264"
    assert [a.codec for a in out.audio] == ["aac"]
    assert out.duration_s == pytest.approx(info.duration_s, abs=TIME_TOLERANCE_S)
    # Relative times: Matroska cannot store the AAC priming's negative pts, so the muxer shifts
    # every stream by it (~21 ms), keeping them in sync.
    times = _times(out)
    assert [t - times[0] for t in times] == pytest.approx([float(t) for t in vfr_times(N)], abs=TIME_TOLERANCE_S)


def test_vfr_round_trip_keeps_irregular_timestamps_and_duration(tmp_path):
    info, out = _round_trip(make_clip(tmp_path / "vfr.mp4", vfr=True), tmp_path / "out.mp4")
    assert _times(out) == pytest.approx([float(t) for t in vfr_times(N)], abs=TIME_TOLERANCE_S)
    assert out.duration_s == pytest.approx(info.duration_s, abs=TIME_TOLERANCE_S)


def test_rotated_clip_is_written_upright_without_rotation(tmp_path):
    info, out = _round_trip(make_clip(tmp_path / "rot.mp4", rotation=-90), tmp_path / "out.mp4")
    assert (out.width, out.height, out.rotation) == (48, 64, 0)
    assert (out.coded_width, out.coded_height) == (48, 64)
    assert [identify_frame(f.rgb, N) for f in iter_frames(out)] == list(range(N))


def test_clip_without_audio_round_trips(tmp_path):
    info, out = _round_trip(make_clip(tmp_path / "silent.mp4", audio=None), tmp_path / "out.mp4")
    assert info.audio == () and out.audio == ()
    assert out.frame_count == N


@pytest.mark.parametrize(("name", "codec"), [("pcm.mov", "pcm_s16le"), ("opus.mkv", "opus")])
def test_non_aac_audio_is_transcoded_to_aac(tmp_path, name, codec):
    info, out = _round_trip(make_clip(tmp_path / name, audio=codec), tmp_path / "out.mp4")
    (src_audio,) = info.audio
    assert src_audio.codec == codec and not src_audio.copyable
    (audio,) = out.audio
    assert (audio.codec, audio.language, audio.sample_rate, audio.channels) == ("aac", "eng", 48000, 2)
    assert audio.duration_s == pytest.approx(src_audio.duration_s, abs=AUDIO_TOLERANCE_S)


def test_two_audio_streams_are_both_kept_with_languages(tmp_path):
    info, out = _round_trip(make_clip(tmp_path / "two.mp4", audio_streams=2), tmp_path / "out.mp4")
    assert [a.language for a in info.audio] == ["eng", "fra"]
    assert [(a.codec, a.language) for a in out.audio] == [("aac", "eng"), ("aac", "fra")]


@pytest.mark.parametrize(("name", "codec"), [("late.mp4", "aac"), ("late.mov", "pcm_s16le")])
def test_start_offset_and_audio_offset_are_kept(tmp_path, name, codec):
    # Video starts at 0.5 s, the sound at 0.25 s: both offsets must survive copy and transcode.
    src = make_clip(tmp_path / name, audio=codec, start_s=Fraction(1, 2), audio_start_s=Fraction(1, 4))
    info, out = _round_trip(src, tmp_path / "out.mp4")
    assert _times(out)[0] == pytest.approx(0.5, abs=TIME_TOLERANCE_S)
    assert _times(out) == pytest.approx(_times(info), abs=TIME_TOLERANCE_S)
    assert first_sound_s(src) == pytest.approx(0.25, abs=TIME_TOLERANCE_S)
    assert first_sound_s(out.path) == pytest.approx(first_sound_s(src), abs=TIME_TOLERANCE_S)


def test_full_render_keeps_all_audio_partial_render_cuts_it(tmp_path):
    src = make_clip(tmp_path / "long_audio.mp4", audio_extra_s=0.5)
    info = probe_video(src)
    frames = list(iter_frames(info))
    pairs = [(f.rgb, f.pts) for f in frames]
    encode_video(pairs, output_path=tmp_path / "full.mp4", time_base=info.time_base, source=info)
    full = probe_video(tmp_path / "full.mp4")
    assert full.audio[0].duration_s == pytest.approx(info.audio[0].duration_s, abs=AUDIO_TOLERANCE_S)

    encode_video(pairs[: N // 2], output_path=tmp_path / "part.mp4", time_base=info.time_base, source=info)
    part = probe_video(tmp_path / "part.mp4")
    assert part.frame_count == N // 2
    assert part.audio[0].duration_s == pytest.approx((N // 2) / FPS, abs=AUDIO_TOLERANCE_S)


def test_audio_is_interleaved_with_video(tmp_path):
    _, out = _round_trip(make_clip(tmp_path / "a.mp4", n_frames=48), tmp_path / "out.mp4")
    with av.open(str(out.path)) as container:
        order = [(p.pos, p.stream.type) for p in container.demux() if p.size]
    kinds = [kind for _, kind in sorted(order)]  # stream of each packet in file order
    switches = sum(a != b for a, b in zip(kinds, kinds[1:]))
    # 2 s of 24 fps video and 48 kHz AAC (~47 packets/s): interleaved means many switches, not
    # one block of each (which would mean the whole video was buffered before the audio).
    assert switches >= 40


def test_encode_rejects_non_increasing_pts_and_leaves_no_file(tmp_path):
    rgb = frame_pattern(0, 64, 48)
    out = tmp_path / "out.mp4"
    with pytest.raises(ValueError, match="increase strictly"):
        encode_video([(rgb, 0), (rgb, 10), (rgb, 10)], output_path=out, time_base=Fraction(1, 100))
    assert list(tmp_path.iterdir()) == []


def test_encode_rejects_odd_frames(tmp_path):
    with pytest.raises(ValueError, match="even"):
        odd = np.zeros((49, 64, 3), np.uint8)
        encode_video([(odd, 0)], output_path=tmp_path / "o.mp4", time_base=Fraction(1, 24))
    assert list(tmp_path.iterdir()) == []


# --- bad input: exact one-line messages ---------------------------------------------------------


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    text = tmp_path / "notes.txt"
    text.write_text("this is not a video\n")
    noise = tmp_path / "noise.bin"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    png = tmp_path / "still.png"
    av.VideoFrame.from_ndarray(frame_pattern(0, 64, 48), format="rgb24").save(str(png))
    whole = make_clip(tmp_path / "whole.mp4")  # index (moov) at the end, as PyAV writes by default
    return {
        "missing": (tmp_path / "missing.mp4", "video file not found: '{p}'"),
        "text": (text, "not a video file: '{p}' (FFmpeg: Invalid data found when processing input)"),
        "random": (noise, "not a video file: '{p}' (FFmpeg: Invalid data found when processing input)"),
        "png": (png, "expected a video, got a still image: '{p}' (format png_pipe, codec png)"),
        "audio_only": (
            make_audio_only(tmp_path / "voice.m4a"),
            "no video stream in '{p}' (streams found: audio aac)",
        ),
        "truncated": (
            truncate_file(whole, tmp_path / "cut.mp4", keep=0.5),
            "truncated video file (no MP4 index): '{p}' (FFmpeg: moov atom not found)",
        ),
        "directory": (tmp_path, "expected a video file, got a directory: '{p}'"),
    }


@pytest.mark.parametrize("case", ["missing", "text", "random", "png", "audio_only", "truncated", "directory"])
def test_bad_input_raises_one_clear_line(tmp_path, case):
    path, message = _bad_inputs(tmp_path)[case]
    with pytest.raises(InputError) as excinfo:
        probe_video(path)
    assert str(excinfo.value) == message.format(p=path)


def test_video_with_no_decodable_frame_is_refused(tmp_path):
    data = bytearray(make_clip(tmp_path / "a.mp4", faststart=True).read_bytes())
    payload = data.find(b"mdat") + 4
    data[payload:] = bytes(len(data) - payload)  # keep the index, zero every frame
    path = tmp_path / "zeros.mp4"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"^no decodable video frame in '.*zeros\.mp4' \(FFmpeg: .+\)$"):
        probe_video(path)


# --- bad output ----------------------------------------------------------------------------------


def _never_iterated():
    raise AssertionError("frames were consumed before the output path was checked")
    yield  # pragma: no cover


def test_unsupported_output_extension_is_refused_before_encoding(tmp_path):
    out = tmp_path / "out.avi"
    with pytest.raises(OutputError) as excinfo:
        encode_video(_never_iterated(), output_path=out, time_base=Fraction(1, 24))
    expected = f"unsupported output extension '.avi' in '{out}': expected one of .mp4, .m4v, .mov, .mkv"
    assert str(excinfo.value) == expected


def test_output_equal_to_input_is_refused_and_input_untouched(tmp_path):
    src = make_clip(tmp_path / "a.mp4")
    before = src.read_bytes()
    info = probe_video(src)
    same = tmp_path / "sub" / ".." / "a.mp4"  # spelled differently, same file
    (tmp_path / "sub").mkdir()
    with pytest.raises(OutputError) as excinfo:
        encode_video(_never_iterated(), output_path=same, time_base=info.time_base, source=info)
    assert str(excinfo.value) == f"output path is the input video: '{same}' (writing it would destroy the input)"
    assert src.read_bytes() == before


def test_missing_output_directory_is_refused(tmp_path):
    out = tmp_path / "no" / "such" / "out.mp4"
    with pytest.raises(OutputError) as excinfo:
        check_output_path(out)
    assert str(excinfo.value) == f"output directory does not exist: '{out.parent}'"


def test_read_only_output_directory_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("permissions do not stop this user (root) from writing")
        with pytest.raises(OutputError, match=r"^output directory is not writable: '.*ro' \(Permission denied\)$"):
            check_output_path(ro / "out.mp4")
    finally:
        ro.chmod(0o755)


def test_check_output_path_accepts_supported_extensions_any_case(tmp_path):
    assert check_output_path(tmp_path / "x.MP4") == tmp_path / "x.MP4"
    assert check_output_path(tmp_path / "x.mkv", input_path=tmp_path / "in.mp4") == tmp_path / "x.mkv"


def test_disk_full_gives_output_error_and_removes_temp_file(tmp_path, monkeypatch):
    info = probe_video(make_clip(tmp_path / "a.mp4", size=(128, 96), n_frames=24))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    disks = full_disk_on_write(monkeypatch, limit=4096)  # the encoder's temp file fills up at 4 kB
    with pytest.raises(OutputError) as excinfo:
        encode_video(
            ((f.rgb, f.pts) for f in iter_frames(info)),
            output_path=out_dir / "out.mp4",
            time_base=info.time_base,
            source=info,
            crf=0,
        )
    for disk in disks:  # PyAV leaves Python file objects it was given open
        disk.close()
    assert str(excinfo.value) == f"disk full while writing '{out_dir / 'out.mp4'}' (No space left on device)"
    assert list(out_dir.iterdir()) == []


def test_output_file_gets_the_usual_permissions_not_owner_only(tmp_path):
    src = make_clip(tmp_path / "in.mp4", n_frames=2, audio=None)
    info = probe_video(src)
    out = tmp_path / "out.mp4"
    old = os.umask(0o022)
    try:
        encode_video(((f.rgb, f.pts) for f in iter_frames(info)), output_path=out, time_base=info.time_base,
                     source=info)
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644


def test_frame_count_is_estimated_from_packets_without_a_duration(tmp_path):
    # An H.264 WebM as a browser records it: no frame count, no duration, no cues.
    info = probe_video(make_recording(tmp_path / "live.webm", video_codec="libx264", container="matroska",
                                      n_frames=40, live=True))
    assert (info.frame_count, info.duration_s, info.video_duration_s) == (None, None, None)
    assert estimate_frame_count(info) == 40  # every packet read: exact
    bounded = estimate_frame_count(info, max_packets=20)  # 20 read, the rest from the bytes left
    assert 20 < bounded <= 60
