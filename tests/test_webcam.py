"""Webcam capture and webcam-style recordings.

FFmpeg's virtual sources (lavfi ``testsrc2`` and ``sine``) stand in for the camera and the microphone,
going through the same capture code as a V4L2 device (``CaptureSource(spec, format)``); recordings as
browsers, phones and capture tools write them are built here and stylised with tiny settings.
"""

from __future__ import annotations

import threading

import av
import numpy as np
import pytest
from common import decoded_audio_span, decoded_times, gap_times, make_audio_only, make_recording
from PIL import Image

from videostyle.cli.main import main
from videostyle.config import RunOptions, StyleConfig
from videostyle.errors import InputError
from videostyle.run.api import stylize_video
from videostyle.media import capture as webcam
from videostyle.media.capture import CaptureSource, record

FPS = 30
AUDIO_TOLERANCE_S = 0.050
# Cheapest honest settings: VGG truncated after relu1_1, 32 px, 2 iterations then 1.
TINY = ("--weights", "untrained", "--style-size", "32", "--iters", "2,1", "--content-layers", "relu1_1",
        "--style-layers", "relu1_1", "-q")


def fake_camera(seconds: float | None = 0.5, size: str = "64x48") -> CaptureSource:
    duration = f":duration={seconds}" if seconds else ""
    return CaptureSource(f"testsrc2=size={size}:rate={FPS}{duration}", "lavfi")


def fake_microphone(seconds: float | None = 0.5) -> CaptureSource:
    duration = f":duration={seconds}" if seconds else ""
    return CaptureSource(f"sine=frequency=440{duration}", "lavfi")


@pytest.fixture(scope="module")
def style(tmp_path_factory):
    path = tmp_path_factory.mktemp("style") / "stripes.png"
    yy, xx = np.mgrid[0:32, 0:32]
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = np.where(((xx + yy) // 4) % 2 == 0, 230, 30)
    rgb[..., 2] = np.where(((xx - yy) // 6) % 2 == 0, 200, 40)
    Image.fromarray(rgb).save(path)
    return path


def _tiny_config(style) -> StyleConfig:
    return StyleConfig(styles=(str(style),), size=32, iters_first=2, iters=1, weights="untrained",
                       content_layers=(("relu1_1", 1.0),), style_layers=(("relu1_1", 1.0),))


def _stream_seconds(path, kind: str) -> float:
    with av.open(str(path)) as container:
        stream = getattr(container.streams, kind)[0]
        return float(stream.duration * stream.time_base)


def _webcam(tmp_path, style, *extra, seconds=0.5, audio=True):
    args = ["webcam", "--input-format", "lavfi", "--device", fake_camera(seconds).spec,
            "--style", str(style), "-o", str(tmp_path / "out.mp4"), *TINY, *extra]
    if audio:
        args += ["--audio-format", "lavfi", "--audio-device", fake_microphone(seconds).spec]
    else:
        args += ["--audio-device", "none"]
    return main(args)


# --- capture -------------------------------------------------------------------------------------


def test_capture_is_lossless_with_audio(tmp_path):
    rec = record(fake_camera(), tmp_path / "raw.mkv", audio=fake_microphone())
    assert (rec.frames, rec.width, rec.height, rec.video_codec, rec.audio_codec) == (15, 64, 48, "ffv1", "pcm_s16le")
    assert rec.duration_s == pytest.approx(0.5, abs=1 / FPS)
    with av.open(fake_camera().spec, format="lavfi") as src:
        expected = [f.to_ndarray() for f in src.decode(video=0)]
    with av.open(str(rec.path)) as raw:
        got = [f.to_ndarray() for f in raw.decode(video=0)]
    assert len(got) == len(expected)
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))  # same yuv420p samples
    codec, start, end = decoded_audio_span(rec.path)
    assert codec == "pcm_s16le" and start == pytest.approx(0, abs=AUDIO_TOLERANCE_S)
    assert end == pytest.approx(0.5, abs=AUDIO_TOLERANCE_S)


def test_capture_stops_at_duration_with_audio_to_the_end(tmp_path):
    rec = record(fake_camera(None), tmp_path / "raw.mkv", audio=fake_microphone(None), duration_s=0.4)
    assert (rec.frames, rec.stopped_by) == (12, "duration")
    assert decoded_times(rec.path) == pytest.approx([i / FPS for i in range(12)], abs=0.001)
    assert decoded_audio_span(rec.path)[2] == pytest.approx(0.4, abs=AUDIO_TOLERANCE_S)


def test_stopping_early_keeps_a_readable_clip(tmp_path):
    stop = threading.Event()
    rec = record(fake_camera(None), tmp_path / "raw.mkv", duration_s=5,
                 on_frame=lambda index, t: stop.set() if index == 4 else None, stop=stop)
    assert rec.stopped_by == "stop"
    assert rec.frames == len(decoded_times(rec.path)) == 5
    assert rec.audio_codec is None


def test_mjpeg_camera_packets_are_kept_as_sent(tmp_path):
    src = make_recording(tmp_path / "cam.avi", video_codec="mjpeg", pix_fmt="yuvj422p")
    rec = record(CaptureSource(str(src), None), tmp_path / "raw.mkv")
    assert rec.video_codec == "mjpeg"

    def payloads(path):
        with av.open(str(path)) as c:
            return [bytes(p) for p in c.demux(video=0) if p.size]
    assert payloads(rec.path) == payloads(src)


def test_yuyv_camera_is_repacked_without_loss(tmp_path):
    src = make_recording(tmp_path / "cam.avi", video_codec="rawvideo", pix_fmt="yuyv422")
    rec = record(CaptureSource(str(src), None), tmp_path / "raw.mkv")
    with av.open(str(rec.path)) as raw:
        assert raw.streams.video[0].codec_context.pix_fmt == "yuv422p"
        got = [f.to_ndarray() for f in raw.decode(video=0)]
    with av.open(str(src)) as c:
        expected = [f.reformat(format="yuv422p").to_ndarray() for f in c.decode(video=0)]
    assert len(got) == 6 and all(np.array_equal(a, b) for a, b in zip(got, expected))


def test_non_pcm_microphone_audio_is_stored_as_flac(tmp_path):
    mic = make_audio_only(tmp_path / "mic.m4a", seconds=0.5)  # AAC: decoded, then stored losslessly as FLAC
    rec = record(fake_camera(), tmp_path / "raw.mkv", audio=CaptureSource(str(mic), None))
    assert rec.audio_codec == "flac"
    codec, start, end = decoded_audio_span(rec.path)
    assert codec == "flac" and start == pytest.approx(0, abs=0.001)
    assert end == pytest.approx(0.5, abs=AUDIO_TOLERANCE_S)


def test_microphone_on_another_clock_is_aligned_with_the_first_picture(tmp_path):
    mic = CaptureSource("sine=frequency=440:duration=0.5,asetpts=PTS+20/TB", "lavfi")  # 20 s off
    rec = record(fake_camera(), tmp_path / "raw.mkv", audio=mic)
    assert rec.audio_codec == "pcm_s16le" and "clocks differ by 20.0 s" in rec.audio_note
    _, start, end = decoded_audio_span(rec.path)
    assert start == pytest.approx(0, abs=0.001) and end == pytest.approx(0.5, abs=AUDIO_TOLERANCE_S)


def test_raw_clip_never_overwrites_an_earlier_recording(tmp_path):
    (tmp_path / "out.raw.mkv").write_bytes(b"earlier take")
    assert webcam.raw_clip_path(tmp_path / "out.mp4") == tmp_path / "out.raw-2.mkv"


def test_microphone_none_gives_a_note():
    source, note = webcam.microphone_source("none")
    assert source is None and "no audio" in note


# --- CLI -----------------------------------------------------------------------------------------


def test_webcam_records_then_stylises_with_timing_and_audio(tmp_path, style, capsys):
    assert _webcam(tmp_path, style) == 0
    out, raw = tmp_path / "out.mp4", tmp_path / "out.raw.mkv"
    assert raw.is_file()  # the lossless recording stays beside the output
    times = decoded_times(out)
    assert times == pytest.approx([i / FPS for i in range(15)], abs=0.002)
    assert _stream_seconds(out, "video") == pytest.approx(0.5, abs=1 / FPS)
    with av.open(str(out)) as c:
        assert c.streams.audio[0].codec_context.name == "aac"
    assert _stream_seconds(out, "audio") == pytest.approx(0.5, abs=AUDIO_TOLERANCE_S)
    assert not (tmp_path / "out.raw.mkv.videostyle-work").exists()
    assert f"recorded {raw}: 15 frames" in capsys.readouterr().out


def test_record_only_without_microphone_says_the_clip_has_no_audio(tmp_path, style, capsys):
    assert _webcam(tmp_path, style, "--record-only", audio=False) == 0
    captured = capsys.readouterr()
    assert not (tmp_path / "out.mp4").exists()
    with av.open(str(tmp_path / "out.raw.mkv")) as c:
        assert len(c.streams.audio) == 0 and c.streams.video[0].codec_context.name == "ffv1"
    assert "videostyle: note: audio off (--audio-device none): the clip has no audio" in captured.err
    assert f"videostyle stylize {tmp_path / 'out.raw.mkv'}" in captured.out


def test_preview_reports_fps_and_defers_quality_to_the_offline_pass(tmp_path, style, capsys):
    assert _webcam(tmp_path, style, "--record-only", "--preview", "--preview-size", "32",
                   "--preview-iters", "1", audio=False) == 0
    out = capsys.readouterr().out
    assert "fps at 32x24 px, 1 iteration each, warm start" in out
    assert "the final quality comes from the offline pass" in out
    with av.open(str(tmp_path / "out.preview.mp4")) as c:
        stream = c.streams.video[0]
        assert (stream.width, stream.height) == (32, 24)
        assert stream.frames >= 1


def test_missing_camera_is_one_line_and_exit_2(tmp_path, style, capsys):
    missing = tmp_path / "video7"
    code = main(["webcam", "--device", str(missing), "--style", str(style), "-o", str(tmp_path / "out.mp4"),
                 "--audio-device", "none", *TINY])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"videostyle: error: no camera at {missing}")
    assert "list cameras with `v4l2-ctl --list-devices`" in err and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_microphone_that_cannot_be_opened_is_one_line_and_exit_2(tmp_path, style, capsys):
    code = main(["webcam", "--input-format", "lavfi", "--device", fake_camera().spec, "--style", str(style),
                 "-o", str(tmp_path / "out.mp4"), "--audio-format", "lavfi", "--audio-device", "nosuchsource",
                 *TINY])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("videostyle: error: cannot open microphone nosuchsource (FFmpeg: ") and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_open_source_names_the_missing_camera():
    with pytest.raises(InputError, match=r"^no camera at /nonexistent/video0; list cameras with"):
        webcam.open_source(webcam.camera_source("/nonexistent/video0"), kind="camera")


# --- recordings from browsers, phones and capture tools -------------------------------------------

RECORDINGS = {
    "mjpeg-avi": dict(name="cam.avi", video_codec="mjpeg", pix_fmt="yuvj422p", audio="pcm_s16le"),
    "yuyv-avi": dict(name="cam.avi", video_codec="rawvideo", pix_fmt="yuyv422", audio="pcm_s16le"),
    "yuyv-mkv": dict(name="cam.mkv", video_codec="rawvideo", pix_fmt="yuyv422", audio="pcm_s16le"),
    "h264-mkv-live": dict(name="rec.mkv", video_codec="libx264", audio="libopus", live=True),
    "h264-in-webm-live": dict(name="chrome.webm", container="matroska", video_codec="libx264", audio="libopus",
                              live=True),
    "vp8-opus-webm-live": dict(name="rec.webm", video_codec="libvpx", audio="libopus", live=True),
    "vp9-vorbis-webm-live": dict(name="rec.webm", video_codec="libvpx-vp9", audio="vorbis", audio_channels=2,
                                 live=True),
    "vp8-vfr-gaps-webm-live": dict(name="rec.webm", video_codec="libvpx", audio="libopus", live=True,
                                   times=gap_times(FPS)),
}


@pytest.mark.parametrize("kind", list(RECORDINGS))
def test_recording_stylises_with_its_timing_and_audio(tmp_path, style, kind):
    spec = dict(RECORDINGS[kind])
    src = make_recording(tmp_path / spec.pop("name"), fps=FPS, **spec)
    out = tmp_path / "out.mp4"
    stylize_video(src, out, _tiny_config(style), RunOptions(preset="ultrafast", quiet=True))

    source_times, output_times = decoded_times(src), decoded_times(out)
    assert len(output_times) == len(source_times) == 6
    assert output_times == pytest.approx(source_times, abs=0.002)  # gaps and uneven steps kept
    source_end = source_times[-1] + 1 / FPS
    assert _stream_seconds(out, "video") == pytest.approx(source_end, abs=1 / FPS)

    _, src_start, src_end = decoded_audio_span(src)
    with av.open(str(out)) as c:
        assert c.streams.audio[0].codec_context.name == "aac"
    assert _stream_seconds(out, "audio") == pytest.approx(src_end - src_start, abs=AUDIO_TOLERANCE_S)
