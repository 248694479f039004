"""Webcam capture: record a camera (and microphone) losslessly, with an optional live stylised preview.

Convention:
    A capture source is anything PyAV opens as ``av.open(spec, format=format, options=options)``: a
    V4L2 camera (``"/dev/video0"``, format ``"v4l2"``), an ALSA microphone (``"default"``,
    ``"alsa"``), and in tests FFmpeg's virtual sources (``"testsrc2=size=64x48:rate=30"``, format
    ``"lavfi"``) or plain files (format ``None``). All of them go through the same code
    (:func:`open_source`, :func:`record`).

    The raw clip is Matroska (``.mkv``), written in place rather than via a temp file: Matroska stays
    readable up to the last cluster written, so even a killed recording keeps what was captured.
    Video: a camera's MJPEG packets are copied as they came; any other picture format is encoded
    with FFV1 (lossless), keeping its pixel format or repacking it without loss (YUYV -> yuv422p,
    NV12 -> yuv420p, RGB24 -> BGR0). Audio: PCM packets are copied as they came, other codecs are
    encoded as FLAC. Timestamps are the capture times, in seconds relative to the first video frame;
    nothing assumes a constant frame rate. Audio captured before the first picture is dropped
    (at most one audio packet, a few tens of ms), audio after the last picture is kept up to where
    that picture stops showing.
"""

from __future__ import annotations

import collections
import glob
import os
import queue
import threading
import time
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Mapping

import av
import numpy as np

from videostyle.errors import InputError, OutputError
from videostyle.media.probe import ffmpeg_errors_shown, ffmpeg_log, ffmpeg_reason

__all__ = [
    "CaptureSource", "Recording", "camera_source", "microphone_source", "open_source", "record",
    "raw_clip_path",
]

DEFAULT_CAMERA = "/dev/video0"
CAMERA_FORMAT = "v4l2"
MICROPHONE_FORMAT = "alsa"
LIST_CAMERAS_HINT = "list cameras with `v4l2-ctl --list-devices` or `ls /dev/video*`"

# Video codecs whose packets go into the raw clip unchanged (a webcam's compressed format).
_COPY_VIDEO = {"mjpeg"}
# PCM formats Matroska stores as they are (A_PCM/INT/LIT, A_PCM/INT/BIG, A_PCM/FLOAT/IEEE).
_COPY_AUDIO = {"pcm_u8", "pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_s24be", "pcm_s32le", "pcm_s32be",
               "pcm_f32le", "pcm_f64le"}
# Packed or odd pixel formats FFV1 cannot store, and the planar format holding the same samples.
_FFV1_REPACK = {"yuyv422": "yuv422p", "uyvy422": "yuv422p", "yvyu422": "yuv422p", "nv12": "yuv420p",
                "nv21": "yuv420p", "nv16": "yuv422p", "rgb24": "bgr0", "bgr24": "bgr0", "rgb0": "bgr0",
                "0rgb": "bgr0", "0bgr": "bgr0", "rgba": "bgra", "argb": "bgra", "abgr": "bgra",
                "gray8": "gray"}
_FFV1_FALLBACK = "yuv444p"  # anything else (e.g. yuvj422p from a decoded MJPEG): no chroma subsampling
# How long to wait for the first picture after the camera opened, and for the audio to catch up
# with the last picture after recording stopped (seconds of wall time).
FIRST_FRAME_TIMEOUT_S = 10.0
AUDIO_DRAIN_TIMEOUT_S = 1.5
# Camera and microphone timestamps further apart than this at the start are on different clocks.
CLOCK_MISMATCH_S = 5.0
_QUEUE_DEPTH = 64  # captured items waiting for the writer; a full queue makes the device drop frames


@dataclass(frozen=True)
class CaptureSource:
    """What to open: ``av.open(spec, format=format, options=dict(options))``.

    Attributes:
        spec: device path or name (``/dev/video0``, ``default``, ``hw:1,0``), a lavfi graph, or a file.
        format: FFmpeg input format (``v4l2``, ``alsa``, ``lavfi``); ``None`` lets FFmpeg guess (files).
        options: demuxer options, e.g. ``{"video_size": "640x480", "framerate": "30"}`` for V4L2.
        label: how messages name it (default ``spec``).
    """

    spec: str
    format: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)
    label: str = ""

    @property
    def shown(self) -> str:
        return self.label or self.spec


def camera_source(device: str = DEFAULT_CAMERA, *, size: tuple[int, int] | None = None,
                  fps: float | None = None, input_format: str | None = CAMERA_FORMAT,
                  pixel_format: str | None = None, with_audio: bool = False) -> CaptureSource:
    """The camera as a :class:`CaptureSource`.

    Args:
        device: V4L2 device path (or, with another ``input_format``, what that format opens).
        size: requested ``(width, height)`` px; the driver may pick the nearest it supports.
        fps: requested frames/s (the driver may pick another; timestamps are what it delivers).
        input_format: ``"v4l2"`` for a camera; ``"lavfi"`` or ``None`` inject a virtual source or a
            file (tests), for which ``size``/``fps``/``pixel_format`` are ignored.
        pixel_format: V4L2 ``input_format``, e.g. ``"mjpeg"`` or ``"yuyv422"`` (default: the driver's).
        with_audio: a microphone is recorded too: V4L2 timestamps are then taken on the wall clock
            (``ts=abs``), the clock ALSA stamps audio with, so the two stay in sync.
    """
    options: dict[str, str] = {}
    if input_format == CAMERA_FORMAT:
        if size:
            options["video_size"] = f"{size[0]}x{size[1]}"
        if fps:
            options["framerate"] = f"{fps:g}"
        if pixel_format:
            options["input_format"] = pixel_format
        if with_audio:
            options["ts"] = "abs"
    return CaptureSource(device, input_format, options)


def microphone_source(device: str = "auto", *, input_format: str | None = MICROPHONE_FORMAT
                      ) -> tuple[CaptureSource | None, str | None]:
    """The microphone to record, or why there is none.

    Args:
        device: ``"auto"`` (ALSA's ``default`` when the machine has an audio capture device),
            ``"none"`` (no audio), or a device name for ``input_format`` (ALSA: ``default``,
            ``hw:1,0``, ``pulse``; lavfi: a graph such as ``sine=frequency=440``).
    Returns:
        ``(source, None)``, or ``(None, note)`` where ``note`` says in one line why the clip will have
        no audio. An explicitly named device is always returned (opening it may still fail).
    """
    if device == "none":
        return None, "audio off (--audio-device none): the clip has no audio"
    if device != "auto":
        return CaptureSource(device, input_format), None
    if input_format == MICROPHONE_FORMAT:
        if MICROPHONE_FORMAT not in av.formats_available:
            return None, "no microphone support (this FFmpeg has no ALSA input): the clip has no audio"
        # ALSA capture PCMs are /dev/snd/pcmC<card>D<device>c; without one, opening "default" would only
        # print ALSA's own complaints to the terminal.
        if not glob.glob("/dev/snd/pcmC*D*c"):
            return None, "no microphone found (no ALSA capture device in /dev/snd): the clip has no audio"
    return CaptureSource("default", input_format, label="default microphone"), None


def _available_cameras() -> list[str]:
    return sorted(glob.glob("/dev/video*"), key=lambda p: (len(p), p))


def open_source(source: CaptureSource, *, kind: str) -> av.container.InputContainer:
    """Open a capture source; :class:`InputError` (one line) when it cannot be.

    Args:
        kind: ``"camera"`` or ``"microphone"``, for the messages.
    Raises:
        InputError: no such device (for a camera: ``no camera at /dev/video0; list cameras with ...``),
            FFmpeg lacks the input format, the device is busy or not permitted, or FFmpeg refused it.
    """
    shown = source.shown
    if source.format == CAMERA_FORMAT and kind == "camera":
        if CAMERA_FORMAT not in av.formats_available and "video4linux2,v4l2" not in av.formats_available:
            raise InputError(f"camera capture needs FFmpeg's v4l2 input (Linux), which this FFmpeg lacks; "
                             f"record with another tool and run `videostyle stylize` on the file")
        if not os.path.exists(source.spec):
            found = _available_cameras()
            others = f" (found: {', '.join(found)})" if found else ""
            raise InputError(f"no camera at {shown}{others}; {LIST_CAMERAS_HINT}")
    if source.format and source.format not in av.formats_available and not any(
            source.format in name.split(",") for name in av.formats_available):
        raise InputError(f"cannot open {kind} {shown!r}: this FFmpeg has no {source.format!r} input")
    with ffmpeg_log() as logs:
        try:
            return av.open(source.spec, "r", format=source.format, options=dict(source.options))
        except av.error.FFmpegError as exc:
            reason = ffmpeg_reason(exc, logs)
            code = getattr(exc, "errno", None)
            if code == 16:  # EBUSY
                raise InputError(f"{kind} {shown} is busy (another program is using it)") from exc
            if code in (1, 13):  # EPERM, EACCES
                hint = "; add your user to the 'video' group" if kind == "camera" else ""
                raise InputError(f"no permission to open {kind} {shown}{hint}") from exc
            if code == 2 and kind == "camera" and source.format == CAMERA_FORMAT:
                raise InputError(f"no camera at {shown}; {LIST_CAMERAS_HINT}") from exc
            raise InputError(f"cannot open {kind} {shown} (FFmpeg: {reason})") from exc


def raw_clip_path(output: str | os.PathLike) -> Path:
    """Where the raw recording for ``output`` goes: ``NAME.raw.mkv`` beside it, never an existing file.

    ``out.mp4`` -> ``out.raw.mkv``, or ``out.raw-2.mkv``, ``out.raw-3.mkv`` ... when taken, so an
    earlier recording is never overwritten.
    """
    output = Path(output)
    candidate = output.with_name(f"{output.stem}.raw.mkv")
    n = 2
    while candidate.exists():
        candidate = output.with_name(f"{output.stem}.raw-{n}.mkv")
        n += 1
    return candidate


@dataclass(frozen=True)
class Recording:
    """What :func:`record` wrote.

    Attributes:
        path: the raw clip (Matroska).
        frames: video frames written.
        duration_s: from the first frame to where the last one stops showing, seconds.
        width, height: picture size in px as captured.
        video_codec: as stored: ``"ffv1"`` (encoded losslessly) or ``"mjpeg"`` (camera's packets copied).
        audio_codec: ``"pcm_s16le"`` etc. (copied) or ``"flac"``; ``None`` when the clip has no audio.
        audio_note: why the clip has no audio or less audio than video (one line), else ``None``.
        fps: measured average frames/s over the clip, ``None`` for a single frame.
        gaps: frame intervals longer than 1.5 nominal frames: frames the camera (or a busy machine) dropped.
        stopped_by: ``"duration"``, ``"end of input"``, ``"interrupt"``, ``"stop"`` or ``"camera error: ..."``.
    """

    path: Path
    frames: int
    duration_s: float
    width: int
    height: int
    video_codec: str
    audio_codec: str | None
    audio_note: str | None
    fps: float | None
    gaps: int
    stopped_by: str

    def describe(self) -> str:
        rate = f", {self.fps:.1f} fps" if self.fps else ""
        gaps = f", {self.gaps} gaps (dropped frames)" if self.gaps else ""
        video = "FFV1, lossless" if self.video_codec == "ffv1" else f"{self.video_codec} as the camera sent it"
        audio = f" + {self.audio_codec} audio" if self.audio_codec else ", no audio"
        return (f"{self.frames} frames, {self.duration_s:.2f} s, {self.width}x{self.height}{rate}{gaps} "
                f"({video}{audio})")


# --------------------------------------------------------------------------------------------------
# Readers: one thread per source, so a blocking device read never holds up the other device.


@dataclass
class _Item:
    kind: str  # "video" | "audio"
    what: str  # "packet" | "frame" | "end" | "error"
    obj: object = None
    pts: int | None = None
    time_base: Fraction | None = None


class _Reader:
    """Demuxes one stream on a thread and queues packets (copy) or decoded frames.

    The container is closed by :meth:`close` on the writer's thread once the reader has stopped:
    the writer still reads the input streams' parameters (``add_stream_from_template``) after a
    short source has already ended (closing it in the reader crashed FFmpeg: a freed stream). A
    reader stuck in a device read is left alone (daemon thread) rather than closed under its feet.
    """

    def __init__(self, container, stream, kind: str, out: queue.Queue, *, decode: bool):
        self.container = container
        self.stream = stream
        self.kind = kind
        self.decode = decode
        self.bad_packets = 0
        self._out = out
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"videostyle-capture-{kind}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def close(self) -> None:
        """Close the container if the thread has ended (else leave it to the daemon thread's exit)."""
        if self._thread.is_alive():
            return
        try:
            self.container.close()
        except Exception:
            pass

    def _put(self, item: _Item) -> bool:
        while not self._stop.is_set():
            try:
                self._out.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        stream = self.stream
        tb = stream.time_base
        try:
            for packet in self.container.demux(stream):
                if self._stop.is_set():
                    break
                if not self.decode:
                    if packet.size == 0:
                        continue  # demux's end-of-stream marker
                    if not self._put(_Item(self.kind, "packet", packet, packet.pts, tb)):
                        break
                    continue
                try:
                    frames = stream.decode(packet)
                except av.error.FFmpegError:
                    self.bad_packets += 1  # one damaged picture from the device: skip it
                    continue
                for frame in frames:
                    if not self._put(_Item(self.kind, "frame", frame, frame.pts, tb)):
                        return
            self._put(_Item(self.kind, "end"))
        except BaseException as exc:  # handed to the writer, which decides what it means
            self._put(_Item(self.kind, "error", exc))


# --------------------------------------------------------------------------------------------------
# Writer: the raw Matroska clip.


class _RawWriter:
    """Writes the raw clip; created at the first video item (its size and format are known then)."""

    def __init__(self, path: Path, first: _Item, vstream_in, astream_in, *, copy_video: bool,
                 copy_audio: bool):
        self.path = path
        self.copy_video = copy_video
        self.copy_audio = copy_audio
        self.out = av.open(str(path), "w", format="matroska")
        try:
            # Every stream is added before the first mux (docs/ARCHITECTURE.md: "Cannot rebase to zero time").
            if copy_video:
                self.vstream = self.out.add_stream_from_template(vstream_in)
                cc = vstream_in.codec_context
                self.width, self.height, self.video_codec = cc.width, cc.height, cc.name
            else:
                frame = first.obj
                self.width, self.height = frame.width, frame.height
                self.pix_fmt = _ffv1_format(frame.format.name)
                self.vstream = self.out.add_stream("ffv1")
                self.vstream.width, self.vstream.height = frame.width, frame.height
                self.vstream.pix_fmt = self.pix_fmt
                self.vstream.time_base = first.time_base
                self.vstream.codec_context.time_base = first.time_base
                rate = vstream_in.average_rate or vstream_in.guessed_rate
                if rate:
                    self.vstream.codec_context.framerate = Fraction(rate)
                # Level 3 with per-slice CRCs: the archival setting; slices let FFV1 use threads.
                self.vstream.options = {"level": "3", "slicecrc": "1", "slices": "4"}
                self.vstream.thread_type = "SLICE"
                self.video_codec = "ffv1"
            self.astream = None
            self.audio_codec = None
            if astream_in is not None:
                if copy_audio:
                    self.astream = self.out.add_stream_from_template(astream_in)
                    self.audio_codec = astream_in.codec_context.name
                else:
                    acc = astream_in.codec_context
                    self.astream = self.out.add_stream("flac", rate=acc.sample_rate)
                    named = acc.layout.name and not any(ch.name == "NONE" for ch in acc.layout.channels)
                    self.astream.layout = acc.layout.name if named else {1: "mono", 2: "stereo"}.get(
                        acc.channels, f"{acc.channels}c")
                    self.astream.format = "s32" if acc.format.bytes > 2 else "s16"
                    self.astream.time_base = Fraction(1, acc.sample_rate)
                    self.audio_codec = "flac"
        except BaseException:
            self.out.close()
            raise
        self._last_video_pts: int | None = None
        self._duration = 1  # the last frame's nominal duration, for the packets the flush returns

    def video(self, item: _Item, rel_pts: int, *, duration: int) -> None:
        """Write one video packet/frame at ``rel_pts`` (input time base, from the first frame).

        ``duration``: nominal frame duration in the same unit, stored with each packet so the clip's
        stated length includes the last frame (without it Matroska ends at the last frame's start).
        """
        if self._last_video_pts is not None and rel_pts <= self._last_video_pts:
            rel_pts = self._last_video_pts + 1  # a device clock that stood still: keep order
        self._last_video_pts = rel_pts
        if self.copy_video:
            packet = item.obj
            packet.pts = packet.dts = rel_pts
            packet.duration = duration
            packet.stream = self.vstream
            self.out.mux(packet)
            return
        frame = item.obj
        if frame.format.name != self.pix_fmt or (frame.width, frame.height) != (self.width, self.height):
            frame = frame.reformat(width=self.width, height=self.height, format=self.pix_fmt)
        frame.pts = rel_pts
        frame.time_base = item.time_base
        self._mux_video(self.vstream.encode(frame), duration)
        self._duration = duration

    def _mux_video(self, packets, duration: int) -> None:
        for packet in packets:
            if not packet.duration:
                packet.duration = duration
            self.out.mux(packet)

    def audio(self, item: _Item, rel_pts: int) -> None:
        if self.astream is None:
            return
        if self.copy_audio:
            packet = item.obj
            packet.pts = packet.dts = rel_pts
            packet.stream = self.astream
            self.out.mux(packet)
            return
        frame = item.obj
        frame.pts = round(rel_pts * item.time_base * frame.sample_rate)
        frame.time_base = Fraction(1, frame.sample_rate)
        self.out.mux(self.astream.encode(frame))

    def close(self) -> None:
        try:
            if not self.copy_video:
                self._mux_video(self.vstream.encode(None), self._duration)
            if self.astream is not None and not self.copy_audio:
                self.out.mux(self.astream.encode(None))
        finally:
            self.out.close()


def _ffv1_format(name: str) -> str:
    supported = {f.name for f in av.codec.Codec("ffv1", "w").video_formats}
    if name in supported:
        return name
    repacked = _FFV1_REPACK.get(name)
    return repacked if repacked in supported else _FFV1_FALLBACK


# --------------------------------------------------------------------------------------------------
# Recording


def record(video: CaptureSource, output: str | os.PathLike, *, audio: CaptureSource | None = None,
           audio_note: str | None = None, duration_s: float | None = None,
           stop: threading.Event | None = None,
           on_frame: Callable[[int, float], None] | None = None,
           on_start: Callable[[], None] | None = None,
           preview=None) -> Recording:
    """Capture ``video`` (and ``audio``) into the raw Matroska clip ``output``.

    Stops at ``duration_s`` seconds of video (``None`` or 0: when the input ends), when ``stop`` is
    set, or on Ctrl-C (``KeyboardInterrupt`` is caught: the clip is closed properly and kept).

    Args:
        video: the camera (see :func:`camera_source`).
        output: the ``.mkv`` to write; must not exist (see :func:`raw_clip_path`).
        audio: the microphone, or ``None``; ``audio_note`` says why there is none (kept in the result).
        on_frame: called as ``on_frame(index, time_s)`` after each video frame is written (on the
            calling thread; status lines, tests).
        on_start: called once the devices are open, just before capturing starts.
        preview: offered the newest frame whenever it is idle (``frame_size(w, h)``, ``wants_frame()``,
            ``offer(rgb, time_s)``, ``live_fps()``): :class:`videostyle.cli.webcam.LivePreview`.
    Returns:
        the :class:`Recording`.
    Raises:
        InputError: a device cannot be opened (nothing is written then), or the camera sent no
            frame within :data:`FIRST_FRAME_TIMEOUT_S` s.
        OutputError: ``output`` exists, or its directory is missing or not writable.
    """
    output = Path(output)
    if duration_s is not None and duration_s < 0:
        raise ValueError(f"recording duration must be >= 0 s (0: until stopped), got {duration_s:g}")
    if output.exists():
        raise OutputError(f"raw clip already exists: {str(output)!r} (choose another name)")
    if not output.parent.is_dir():
        raise OutputError(f"output directory does not exist: {str(output.parent)!r}")
    ffmpeg_errors_shown()
    vin = open_source(video, kind="camera")
    try:
        vstream = _pick_stream(vin.streams.video, f"camera {video.shown}", "video")
        ain, astream = None, None
        if audio is not None:
            ain = open_source(audio, kind="microphone")
            try:
                astream = _pick_stream(ain.streams.audio, f"microphone {audio.shown}", "audio")
            except InputError:
                ain.close()
                raise
    except BaseException:
        vin.close()
        raise
    copy_video = vstream.codec_context.name in _COPY_VIDEO
    copy_audio = astream is not None and astream.codec_context.name in _COPY_AUDIO
    items: queue.Queue = queue.Queue(maxsize=_QUEUE_DEPTH)
    readers = {"video": _Reader(vin, vstream, "video", items, decode=not copy_video)}
    if ain is not None:
        readers["audio"] = _Reader(ain, astream, "audio", items, decode=not copy_audio)
    session = _Session(output, vstream, astream, copy_video=copy_video, copy_audio=copy_audio,
                       duration_s=duration_s or None, on_frame=on_frame, preview=preview)
    if on_start is not None:
        try:
            on_start()
        except BaseException:
            vin.close()
            if ain is not None:
                ain.close()
            raise
    for reader in readers.values():
        reader.start()
    try:
        session.run(items, stop, readers)
    finally:
        for reader in readers.values():
            reader.stop()
        for reader in readers.values():
            reader.join(timeout=2.0)
        try:
            session.close()
        finally:
            for reader in readers.values():
                reader.close()
    return session.result(audio_note, readers)


def _pick_stream(streams, shown: str, kind: str):
    if not streams:
        raise InputError(f"{shown} gives no {kind} stream")
    return streams[0]


class _Session:
    """The writer loop of :func:`record`: timing, stop conditions, audio alignment, preview hand-off."""

    def __init__(self, path: Path, vstream, astream, *, copy_video: bool, copy_audio: bool,
                 duration_s: float | None, on_frame, preview):
        self.path = path
        self.vstream_in = vstream
        self.astream_in = astream
        self.copy_video = copy_video
        self.copy_audio = copy_audio
        # Exact, so that a frame at 12/30 s is past a 0.4 s recording (0.4 as a float is just above 2/5).
        self.duration_s = Fraction(duration_s).limit_denominator(1_000_000) if duration_s else None
        self.on_frame = on_frame
        self.preview = preview
        self.writer: _RawWriter | None = None
        self.frames = 0
        self.origin_s: Fraction | None = None  # capture time of the first picture, seconds
        self.first_pts: int | None = None
        self.last_rel_s: Fraction | None = None
        self.frame_times: list[float] = []
        self.audio_end_rel_s: float | None = None  # set when recording stops
        self.audio_held: collections.deque = collections.deque()  # (rel_s, item, rel_pts), in order
        self.audio_started = False
        self.audio_ended = astream is None  # the microphone's reader finished
        self.audio_full = False  # audio reached the end of the clip
        self.audio_origin_s: Fraction | None = None  # microphone time of the first picture, seconds
        self.clock_note: str | None = None
        self.audio_problem: str | None = None
        self.stopped_by = "end of input"
        self.pending_audio: list[_Item] = []
        self._decoder = None  # for preview pictures from copied (MJPEG) packets
        rate = vstream.average_rate or vstream.guessed_rate
        self.step_s = Fraction(1) / Fraction(rate) if rate else Fraction(1, 30)

    # -- main loop --------------------------------------------------------------------------------

    def run(self, items: queue.Queue, stop: threading.Event | None, readers: dict) -> None:
        deadline = time.monotonic() + FIRST_FRAME_TIMEOUT_S
        video_error: BaseException | None = None
        try:
            while True:
                if stop is not None and stop.is_set():
                    self.stopped_by = "stop"
                    break
                try:
                    item = items.get(timeout=0.1)
                except queue.Empty:
                    if self.writer is None and time.monotonic() > deadline:
                        raise InputError(f"the camera sent no picture in {FIRST_FRAME_TIMEOUT_S:g} s")
                    continue
                if item.kind == "audio":
                    self._audio_item(item)
                    continue
                if item.what == "end":
                    break
                if item.what == "error":
                    video_error = item.obj
                    break
                if not self._video_item(item):
                    self.stopped_by = "duration"
                    break
        except KeyboardInterrupt:
            self.stopped_by = "interrupt"
        if video_error is not None:
            if self.writer is None:
                raise InputError(f"the camera failed before sending a picture "
                                 f"(FFmpeg: {ffmpeg_reason(video_error)})") from video_error
            self.stopped_by = f"camera error: {ffmpeg_reason(video_error)}"
        if self.writer is None:
            if self.stopped_by in ("interrupt", "stop"):
                raise InputError("recording stopped before the camera sent a picture")
            raise InputError("the camera sent no picture")
        readers["video"].stop()
        self._drain_audio(items)

    def _video_item(self, item: _Item) -> bool:
        """Write one picture; False when it lies past the requested duration (recording is over)."""
        pts = item.pts
        if pts is None:  # a device without timestamps: one nominal frame after the last
            pts = (self.first_pts or 0) + (round((self.last_rel_s + self.step_s) / item.time_base)
                                           if self.last_rel_s is not None else 0)
        if self.writer is None:
            self.first_pts = pts
            self.origin_s = pts * item.time_base
            self.writer = _RawWriter(self.path, item, self.vstream_in, self.astream_in,
                                     copy_video=self.copy_video, copy_audio=self.copy_audio)
            for pending in self.pending_audio:
                self._audio_item(pending)
            self.pending_audio.clear()
        rel_pts = pts - self.first_pts
        rel_s = rel_pts * item.time_base
        if self.duration_s is not None and rel_s >= self.duration_s:
            return False
        # The preview's picture first: muxing a copied packet hands its data to the muxer.
        if self.preview is not None and self.preview.wants_frame():
            rgb = self._preview_picture(item)
            if rgb is not None:
                self.preview.offer(rgb, float(rel_s))
        self.writer.video(item, rel_pts, duration=max(1, round(self.step_s / item.time_base)))
        self.last_rel_s = rel_s
        self._flush_audio()
        self.frame_times.append(float(rel_s))
        self.frames += 1
        if self.on_frame is not None:
            self.on_frame(self.frames - 1, float(rel_s))
        return True

    def _preview_picture(self, item: _Item) -> np.ndarray | None:
        width, height = self.preview.frame_size(self.writer.width, self.writer.height)
        if item.what == "frame":
            frames = [item.obj]
        else:
            if self._decoder is None:
                self._decoder = av.CodecContext.create(self.vstream_in.codec_context.name, "r")
            try:
                frames = self._decoder.decode(item.obj)
            except av.error.FFmpegError:
                return None
        if not frames:
            return None
        return frames[-1].to_ndarray(format="rgb24", width=width, height=height)

    def _audio_item(self, item: _Item) -> None:
        if item.what == "end":
            self.audio_ended = True
            return
        if item.what == "error":
            self.audio_ended = True
            self.audio_problem = f"the microphone stopped (FFmpeg: {ffmpeg_reason(item.obj)})"
            return
        if self.audio_full:
            return
        if self.writer is None:
            self.pending_audio.append(item)
            return
        if item.pts is None:
            return  # PCM from a device always carries its capture time; without one it cannot be placed
        if self.audio_origin_s is None:
            self.audio_origin_s = self.origin_s
            first_s = item.pts * item.time_base
            if abs(first_s - self.origin_s) > CLOCK_MISMATCH_S:
                # Not one clock (e.g. a driver's monotonic stamps against ALSA's wall clock): take the
                # devices to have started together rather than drop all the audio.
                self.audio_origin_s = first_s
                self.clock_note = (f"camera and microphone clocks differ by {float(first_s - self.origin_s):.1f} s; "
                                   f"the audio was aligned to start with the first picture")
        rel_pts = item.pts - round(self.audio_origin_s / item.time_base)
        if rel_pts < 0:
            return  # captured before the first picture
        self.audio_held.append((float(rel_pts * item.time_base), item, rel_pts))
        self._flush_audio()

    def _flush_audio(self) -> None:
        """Write the held audio that starts before the video written so far ends (or, once recording
        stopped, before ``audio_end_rel_s``); audio never runs ahead of the pictures, so a source that
        delivers audio faster than video (a file, lavfi) cannot put sound past the clip's end."""
        if self.audio_end_rel_s is not None:
            horizon = self.audio_end_rel_s
        elif self.last_rel_s is not None:
            horizon = float(self.last_rel_s + self.step_s)
        else:
            return
        while self.audio_held and self.audio_held[0][0] < horizon:
            _, item, rel_pts = self.audio_held.popleft()
            self.writer.audio(item, rel_pts)
            self.audio_started = True
        if self.audio_end_rel_s is not None and self.audio_held:
            self.audio_full = True  # what is left starts after the end
            self.audio_held.clear()

    def _drain_audio(self, items: queue.Queue) -> None:
        """After the last picture: take the audio up to where that picture stops showing."""
        end_s = self.last_rel_s + self.step_s
        if self.stopped_by == "duration":
            end_s = min(end_s, self.duration_s)
        self.audio_end_rel_s = float(end_s)
        self._flush_audio()
        deadline = time.monotonic() + AUDIO_DRAIN_TIMEOUT_S
        try:
            while not (self.audio_full or self.audio_ended) and time.monotonic() < deadline:
                try:
                    item = items.get(timeout=0.05)
                except queue.Empty:
                    continue
                if item.kind == "audio":
                    self._audio_item(item)
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: stop waiting for the audio tail
        self._flush_audio()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        elif self.path.exists():
            self.path.unlink()

    def result(self, audio_note: str | None, readers: dict) -> Recording:
        writer = self.writer
        note = audio_note
        if self.astream_in is not None and not self.audio_started:
            note = "the microphone delivered no audio during the recording: the clip has no audio"
        elif self.audio_problem:
            note = f"{self.audio_problem}; the audio ends early"
        elif self.clock_note:
            note = self.clock_note
        times = self.frame_times
        duration = float(self.last_rel_s + self.step_s)
        fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None
        nominal = float(self.step_s)
        gaps = sum(1 for a, b in zip(times, times[1:]) if b - a > 1.5 * nominal)
        if readers["video"].bad_packets:
            warnings.warn(f"the camera sent {readers['video'].bad_packets} damaged pictures; they were skipped",
                          UserWarning, stacklevel=3)
        return Recording(path=self.path, frames=self.frames, duration_s=duration, width=writer.width,
                         height=writer.height, video_codec=writer.video_codec,
                         audio_codec=writer.audio_codec if self.audio_started else None,
                         audio_note=note, fps=fps, gaps=gaps, stopped_by=self.stopped_by)
