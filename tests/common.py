"""Tiny test clips written with PyAV (tests build their own inputs; no shared media needed).

Convention:
    Sizes are ``(width, height)`` in pixels of the *coded* picture (what is stored in the file).
    Frame ``i`` shows :func:`frame_pattern` ``(i)``: a grey level that rises with ``i`` plus a white
    square that moves right with ``i`` and a red bar along the upright top edge, so a test can
    tell frame order (:func:`identify_frame`) and orientation from decoded pixels.
    Audio is a 440 Hz sine at 48 kHz, one track per requested stream, covering the video's span.
"""

from __future__ import annotations

import errno
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

AUDIO_RATE = 48_000  # Hz; opus only accepts 48 kHz, so every track uses it
SINE_HZ = 440.0
_FORMATS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".h264": "h264"}


def frame_pattern(index: int, width: int, height: int) -> np.ndarray:
    """Upright RGB ``(height, width, 3)`` uint8 picture that identifies frame ``index``.

    Grey background ``40 + 6 * index`` (mod 160), a 25%-of-height white square whose left edge
    moves ``width / 16`` px per frame (wrapping), and a red bar on the top eighth of the rows.
    """
    rgb = np.full((height, width, 3), 40 + (6 * index) % 160, dtype=np.uint8)
    side = max(2, height // 4)
    x0 = (index * max(1, width // 16)) % max(1, width - side)
    y0 = height // 2 - side // 2
    rgb[y0 : y0 + side, x0 : x0 + side] = 255
    rgb[: max(1, height // 8), :, :] = (220, 30, 30)
    return rgb


def other_shot_pattern(index: int, width: int, height: int) -> np.ndarray:
    """Upright RGB ``(height, width, 3)`` uint8 picture of frame ``index`` of a *different shot* than
    :func:`frame_pattern`: a blue-to-green diagonal gradient with a yellow square that moves down
    ``height / 16`` px per frame (wrapping). Cutting from one to the other is a hard scene cut."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = (xs / max(1, width - 1) + ys / max(1, height - 1)) / 2  # 0 top-left .. 1 bottom-right
    rgb = np.stack([20 + 0 * ramp, 60 + 160 * ramp, 200 - 120 * ramp], axis=-1).astype(np.uint8)
    side = max(2, height // 4)
    y0 = (index * max(1, height // 16)) % max(1, height - side)
    x0 = width // 3
    rgb[y0 : y0 + side, x0 : x0 + side] = (240, 220, 40)
    return rgb


def identify_frame(rgb: np.ndarray, n_frames: int, *, drawn_size: tuple[int, int] | None = None) -> int:
    """Index ``i < n_frames`` whose :func:`frame_pattern` is closest (MSE) to upright ``rgb``.

    ``drawn_size``: upright ``(width, height)`` the pattern was drawn at, when ``rgb`` is that
    picture cropped to even size; defaults to ``rgb``'s own size.
    """
    h, w = rgb.shape[:2]
    dw, dh = drawn_size or (w, h)
    errors = [
        np.mean((frame_pattern(i, dw, dh)[:h, :w].astype(np.float32) - rgb.astype(np.float32)) ** 2)
        for i in range(n_frames)
    ]
    return int(np.argmin(errors))


def vfr_times(n_frames: int) -> list[Fraction]:
    """Irregular frame times in seconds: gaps cycle 40, 20, 60, 33 ms (a VFR phone clip's jitter)."""
    gaps_ms = (40, 20, 60, 33)
    times, t = [], Fraction(0)
    for i in range(n_frames):
        times.append(t)
        t += Fraction(gaps_ms[i % len(gaps_ms)], 1000)
    return times


def write_lossless_clip(path: str | Path, frames: list[np.ndarray], *, fps: int = 12,
                        pix_fmt: str = "yuv420p") -> Path:
    """H.264 crf 0 clip of ``frames`` (each ``(H, W, 3)`` uint8 RGB, one size) at ``fps``; returns ``path``."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"crf": "0", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        for rgb in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode())
    return Path(path)


def make_clip(
    path: str | Path,
    *,
    size: tuple[int, int] = (64, 48),
    n_frames: int = 8,
    fps: int = 24,
    audio: str | None = "aac",
    audio_streams: int = 1,
    languages: tuple[str, ...] = ("eng", "fra", "deu"),
    audio_channels: int = 2,
    vfr: bool = False,
    rotation: int = 0,
    start_s: Fraction | float = 0,
    audio_start_s: Fraction | float | None = None,
    audio_extra_s: float = 0.0,
    faststart: bool = False,
    gop: int | None = None,
    cut_at: int | None = None,
) -> Path:
    """Write a tiny H.264 clip with PyAV; the container comes from the extension.

    Args:
        path: ``.mp4``, ``.mov``, ``.mkv`` or ``.h264`` (raw Annex-B stream: no timestamps, no audio).
        size: coded ``(width, height)`` px; odd sizes are allowed (written as yuv444p via
            libx264, which accepts odd sizes only without chroma subsampling).
        n_frames: number of video frames.
        fps: nominal frame rate; frame ``i`` is at ``start_s + i / fps`` s unless ``vfr``.
        audio: audio codec name or ``None``; ``"pcm_s16le"`` needs ``.mov``/``.mkv``.
        audio_streams: number of audio tracks; track ``k`` gets language ``languages[k]``.
        vfr: use :func:`vfr_times` (ms time base) instead of a constant rate.
        rotation: display rotation in degrees counter-clockwise (what ``VideoFrame.rotation``
            reads back); the coded frames are drawn rotated the other way so that applying it
            shows :func:`frame_pattern` upright.
        start_s: time of the first video frame (a non-zero start pts).
        audio_start_s: time of the first audio sample; defaults to ``start_s``.
        audio_extra_s: audio runs this much past the end of the last video frame.
        faststart: MP4/MOV index (moov) before the data, so a cut-off copy still opens.
        gop: a keyframe every ``gop`` frames, with B-frames (reordered decode), for seeking tests;
            default: one keyframe, no B-frames.
        cut_at: frames ``cut_at, cut_at+1, ...`` show :func:`other_shot_pattern` (a hard scene cut at
            frame ``cut_at``); default: :func:`frame_pattern` throughout.
    Returns:
        ``Path(path)``.
    """
    path = Path(path)
    fmt = _FORMATS[path.suffix.lower()]
    width, height = size
    upright_w, upright_h = (height, width) if rotation % 180 else (width, height)
    start_s = Fraction(start_s).limit_denominator(1000)

    if vfr:
        time_base = Fraction(1, 1000)
        times = [start_s + t for t in vfr_times(n_frames)]
        end_s = times[-1] + Fraction(1, fps)
    else:
        time_base = Fraction(1, fps * 1000) if start_s else Fraction(1, fps)
        times = [start_s + Fraction(i, fps) for i in range(n_frames)]
        end_s = start_s + Fraction(n_frames, fps)

    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", format=fmt, options=options) as out:
        # Every stream is added before the first mux (see docs/ARCHITECTURE.md: "Cannot rebase to zero time").
        vstream = out.add_stream("libx264", rate=fps)
        vstream.width, vstream.height = width, height
        odd = width % 2 or height % 2
        vstream.pix_fmt = "yuv444p" if odd else "yuv420p"
        vstream.time_base = time_base
        vstream.codec_context.time_base = time_base
        vstream.options = {"preset": "ultrafast", "crf": "10"}
        if gop:
            vstream.options["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=2"
        if rotation:
            vstream.set_display_rotation(rotation)

        astreams = []
        if audio is not None and fmt != "h264":
            for k in range(audio_streams):
                astream = out.add_stream(audio, rate=AUDIO_RATE)
                astream.layout = "stereo" if audio_channels == 2 else "mono"
                astream.time_base = Fraction(1, AUDIO_RATE)
                astream.metadata["language"] = languages[k]
                astreams.append(astream)

        for i, t in enumerate(times):
            shot = other_shot_pattern if cut_at is not None and i >= cut_at else frame_pattern
            upright = shot(i, upright_w, upright_h)
            coded = np.ascontiguousarray(np.rot90(upright, k=-(rotation // 90))) if rotation else upright
            frame = av.VideoFrame.from_ndarray(coded, format="rgb24")
            frame.pts = int(t / time_base)
            frame.time_base = time_base
            out.mux(vstream.encode(frame))
        out.mux(vstream.encode(None))

        a_start = start_s if audio_start_s is None else Fraction(audio_start_s).limit_denominator(1000)
        a_end = end_s + Fraction(audio_extra_s).limit_denominator(1000)
        for k, astream in enumerate(astreams):
            write_sine(out, astream, a_start, a_end, audio_channels, phase=k)
    return path


def write_sine(out, astream, start_s: Fraction, end_s: Fraction, channels: int, *, phase: int) -> None:
    """Mux a 440 Hz sine from ``start_s`` to ``end_s`` seconds in 1024-sample float frames."""
    total = int(round((end_s - start_s) * AUDIO_RATE))
    first = int(round(start_s * AUDIO_RATE))
    chunk = 1024
    for offset in range(0, total, chunk):
        n = min(chunk, total - offset)
        t = (np.arange(offset, offset + n) + first) / AUDIO_RATE
        wave = (0.3 * np.sin(2 * np.pi * SINE_HZ * t + phase)).astype(np.float32)
        planes = np.repeat(wave[None, :], channels, axis=0)
        frame = av.AudioFrame.from_ndarray(planes, format="fltp", layout="stereo" if channels == 2 else "mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = first + offset
        frame.time_base = Fraction(1, AUDIO_RATE)
        out.mux(astream.encode(frame))
    out.mux(astream.encode(None))


def make_audio_only(path: str | Path, *, seconds: float = 0.5) -> Path:
    """Write an AAC-only ``.m4a``/``.mp4`` (no video stream) with a 440 Hz sine."""
    path = Path(path)
    with av.open(str(path), "w", format="mp4") as out:
        astream = out.add_stream("aac", rate=AUDIO_RATE)
        astream.layout = "mono"
        write_sine(out, astream, Fraction(0), Fraction(seconds).limit_denominator(1000), 1, phase=0)
    return path


def truncate_file(src: str | Path, dst: str | Path, *, keep: float) -> Path:
    """Copy the first ``keep`` fraction (0..1) of ``src``'s bytes to ``dst``: a cut-off download."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * keep)])
    return Path(dst)


def first_sound_s(path: str | Path, *, stream: int = 0, threshold: float = 0.05) -> float:
    """Time in seconds of the first sample of audio stream ``stream`` louder than ``threshold``
    (full scale 1.0): where the sine really starts, whatever the encoder delay/priming."""
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.audio[stream]):
            samples = frame.to_ndarray()
            if samples.dtype.kind == "i":
                samples = samples / float(np.iinfo(samples.dtype).max)
            loud = np.nonzero(np.abs(samples).max(axis=0) > threshold)[0]
            if len(loud):
                return frame.time + loud[0] / frame.sample_rate
    raise ValueError(f"no audio above {threshold} in {path}")


# --- webcam-style recordings (tests/test_webcam.py) ----------------------------------------------

# Container format per extension for make_recording; "live" Matroska/WebM is written as a browser's
# MediaRecorder or a capture tool streaming to disk does: no duration, no cues, no frame count.
_RECORDING_FORMATS = {".avi": "avi", ".mkv": "matroska", ".webm": "webm"}


def make_recording(
    path: str | Path,
    *,
    video_codec: str,
    pix_fmt: str = "yuv420p",
    size: tuple[int, int] = (64, 48),
    times: list[Fraction] | None = None,
    n_frames: int = 6,
    fps: int = 30,
    audio: str | None = None,
    audio_rate: int = AUDIO_RATE,
    audio_channels: int = 1,
    live: bool = False,
    container: str | None = None,
) -> Path:
    """Write a clip the way webcam tools, browsers and phones do; frame ``i`` shows :func:`frame_pattern`.

    Args:
        path: ``.avi``, ``.mkv`` or ``.webm``.
        video_codec: ``"mjpeg"``, ``"rawvideo"`` (with ``pix_fmt="yuyv422"``: raw YUYV),
            ``"libx264"``, ``"libvpx"`` (VP8) or ``"libvpx-vp9"``.
        times: frame times in seconds (variable rate, gaps); default ``i / fps`` for ``n_frames``.
        audio: ``"pcm_s16le"``, ``"libopus"``, ``"vorbis"`` (needs ``audio_channels=2``) or ``None``;
            a 440 Hz sine from 0 to one frame after the last frame's time.
        live: Matroska/WebM without duration, cues or frame count (``live=1`` muxer option).
        container: FFmpeg muxer, overriding the extension's (``"matroska"`` for a ``.webm`` holding
            H.264, as Chrome's MediaRecorder writes it).
    Returns:
        ``Path(path)``.
    """
    path = Path(path)
    fmt = container or _RECORDING_FORMATS[path.suffix.lower()]
    width, height = size
    if times is None:
        times = [Fraction(i, fps) for i in range(n_frames)]
    end_s = times[-1] + Fraction(1, fps)
    # AVI stores one tick per frame (constant rate); the others use Matroska's millisecond clock.
    time_base = Fraction(1, fps) if fmt == "avi" else Fraction(1, 1000)
    with av.open(str(path), "w", format=fmt, options={"live": "1"} if live else {}) as out:
        vstream = out.add_stream(video_codec, rate=fps)
        vstream.width, vstream.height, vstream.pix_fmt = width, height, pix_fmt
        vstream.time_base = time_base
        vstream.codec_context.time_base = time_base
        if video_codec == "libx264":
            vstream.options = {"preset": "ultrafast"}
        elif video_codec.startswith("libvpx"):
            vstream.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        astream = None
        if audio is not None:
            astream = out.add_stream(audio, rate=audio_rate)
            astream.layout = "stereo" if audio_channels == 2 else "mono"
            if audio == "vorbis":  # FFmpeg's own Vorbis encoder is flagged experimental
                astream.codec_context.options = {"strict": "experimental"}
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(frame_pattern(i, width, height), format="rgb24")
            frame.pts = int(t / time_base)
            frame.time_base = time_base
            out.mux(vstream.encode(frame))
        out.mux(vstream.encode(None))
        if astream is not None:
            total = int(round(end_s * audio_rate))
            for offset in range(0, total, 960):
                n = min(960, total - offset)
                t = np.arange(offset, offset + n) / audio_rate
                wave = (0.3 * np.sin(2 * np.pi * SINE_HZ * t)).astype(np.float32)
                frame = av.AudioFrame.from_ndarray(np.repeat(wave[None, :], audio_channels, axis=0),
                                                   format="fltp", layout=astream.layout.name)
                frame.sample_rate = audio_rate
                frame.pts = offset
                frame.time_base = Fraction(1, audio_rate)
                out.mux(astream.encode(frame))
            out.mux(astream.encode(None))
    return path


def gap_times(fps: int = 30) -> list[Fraction]:
    """Frame times of a webcam clip that stalled: 3 frames, a 400 ms gap, 3 frames at a slower, uneven pace."""
    return [Fraction(0), Fraction(1, fps), Fraction(2, fps),
            Fraction(2, fps) + Fraction(2, 5), Fraction(2, fps) + Fraction(9, 20), Fraction(2, fps) + Fraction(26, 50)]


def decoded_times(path: str | Path) -> list[float]:
    """Presentation times in seconds of every video frame of ``path``, decoded."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [float(frame.pts * stream.time_base) for frame in container.decode(stream)]


def decoded_audio_span(path: str | Path) -> tuple[str, float, float]:
    """``(codec, start_s, end_s)`` of the first audio stream of ``path``, from its decoded samples."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        frames = [(frame.time, frame.samples / frame.sample_rate) for frame in container.decode(stream)]
        codec = stream.codec_context.name
    return codec, frames[0][0], frames[-1][0] + frames[-1][1]


class FullDisk:
    """A seekable binary file that fails with ENOSPC once ``limit`` bytes have been written."""

    def __init__(self, path, limit: int):
        self._file = open(path, "wb")
        self._written = 0
        self._limit = limit

    def write(self, data) -> int:
        if self._written + len(data) > self._limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._written += len(data)
        return self._file.write(data)

    def seek(self, offset, whence=0):
        return self._file.seek(offset, whence)

    def tell(self):
        return self._file.tell()

    def close(self):
        self._file.close()


def full_disk_on_write(monkeypatch, limit: int) -> list[FullDisk]:
    """Make every ``av.open(..., "w")`` write to a :class:`FullDisk` that fills up at ``limit`` bytes.

    Returns the list the disks are appended to; close them after the test (PyAV leaves Python file
    objects it was given open).
    """
    real_open = av.open
    disks: list[FullDisk] = []

    def open_on_full_disk(file, mode="r", **kwargs):
        if mode == "w":
            disks.append(FullDisk(file, limit))
            return real_open(disks[-1], mode, **kwargs)
        return real_open(file, mode, **kwargs)

    monkeypatch.setattr(av, "open", open_on_full_disk)
    return disks


# --- helpers the test files share ------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]  # the checkout whose videostyle the tests run


def repo_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess that must import this checkout's videostyle (not whatever an
    editable install points at), plus ``extra``."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def decoded_rgb(video: str | os.PathLike) -> list[np.ndarray]:
    """Every frame of ``video``'s first video stream as ``(H, W, 3)`` uint8 RGB, in decode order."""
    with av.open(str(video)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def decoded_with_pts(video: str | os.PathLike) -> list[tuple[int, np.ndarray]]:
    """``(pts, rgb)`` of every frame of ``video``'s first video stream."""
    with av.open(str(video)) as container:
        return [(f.pts, f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]


def decoded_seconds_and_rgb(video: str | os.PathLike) -> tuple[list[float], list[np.ndarray]]:
    """Frame times (s) and frames ``(H, W, 3)`` uint8 RGB of ``video``'s first video stream."""
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        return [float(f.pts * stream.time_base) for f in frames], [f.to_ndarray(format="rgb24") for f in frames]


def workdir_frames(folder: str | os.PathLike) -> dict[str, bytes]:
    """The frame files of a work dir (``folder/frames/*.png``) by name, with their bytes."""
    return {p.name: p.read_bytes() for p in sorted((Path(folder) / "frames").glob("*.png"))}


def make_clip_with_data_stream(path: str | Path, *, n_frames: int = 4, fps: int = 24) -> Path:
    """An MP4 with a video stream and one data stream (``bin_data`` packets, as a GoPro's GPMF track)."""
    path = Path(path)
    with av.open(str(path), "w", format="mp4") as out:
        vstream = out.add_stream("libx264", rate=fps)
        vstream.width, vstream.height, vstream.pix_fmt = 64, 48, "yuv420p"
        dstream = out.add_data_stream("bin_data")
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(frame_pattern(i, 64, 48), format="rgb24")
            frame.pts = i
            out.mux(vstream.encode(frame))
            packet = av.Packet(b"GPMF" + bytes([i]))
            packet.stream, packet.pts, packet.dts, packet.time_base = dstream, i, i, Fraction(1, fps)
            out.mux(packet)
        out.mux(vstream.encode(None))
    return path
