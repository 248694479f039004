"""Probe a video file: upright frame size, rotation, timing and audio streams.

Convention:
    Sizes are in pixels of the *upright* picture (after the display rotation is applied and
    after cropping to even numbers, i.e. exactly what :func:`videostyle.media.decode.iter_frames`
    yields). Timestamps (``pts``) are integers in the video stream's ``time_base`` (a
    :class:`fractions.Fraction` of seconds); nothing assumes a constant frame rate.
    Every problem the user can cause raises :class:`videostyle.errors.InputError` with one line
    that names what was expected and what came, with FFmpeg's reason where it gave one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av

from videostyle.paths import check_video_path
from videostyle.errors import InputError

__all__ = ["AudioStreamInfo", "Cut", "VideoInfo", "probe_video", "open_input", "with_cut", "dropped_streams_note"]

# Demuxers that read still images (one picture per file), not videos. "yuv4mpegpipe" (.y4m) is a
# real video format and does not match: it ends in "pipe", not "_pipe".
_IMAGE_DEMUXERS = {"image2", "image2pipe"}
# Still-image codecs: a stream of one of these holding a single frame is a picture in a container.
_IMAGE_CODECS = {"png", "mjpeg", "bmp", "tiff", "webp", "gif", "jpeg2000", "jpegls", "qoi", "ppm", "pgm", "pam"}
# Audio codecs that MP4/MOV/MKV accept as-is; everything else is transcoded to AAC.
_COPYABLE_AUDIO = {"aac"}
# Matroska stores per-stream durations only as a "DURATION" tag such as "00:00:00.334000000".
_MKV_DURATION = re.compile(r"^(\d+):(\d\d):(\d\d(?:\.\d+)?)$")


@dataclass(frozen=True)
class AudioStreamInfo:
    """One audio stream of the source, to be copied (AAC) or transcoded to AAC by the encoder."""

    index: int  # stream index in the container
    codec: str  # FFmpeg codec name, e.g. "aac", "pcm_s16le", "opus"
    sample_rate: int  # Hz
    channels: int
    language: str | None  # stream metadata 'language' as stored (e.g. "eng", "und"); None if absent
    copyable: bool  # packets can go into MP4 unchanged (AAC); otherwise transcode to AAC
    start_time_s: float | None = None  # first sample's time in seconds (container clock), None if unknown
    duration_s: float | None = None  # seconds, None if the container does not say


@dataclass(frozen=True)
class Cut:
    """The part of a video a run covers (``stylize --start/--duration``): frames with
    ``start_pts <= pts < end_pts`` (``end_pts`` None: to the end), in the video's ``time_base``.

    ``start_s``/``duration_s`` are as the user gave them (seconds from the first frame; None: to the end).
    """

    start_s: float
    duration_s: float | None
    start_pts: int
    end_pts: int | None


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` found; everything :mod:`decode` and :mod:`encode` need.

    Attributes:
        path: the file as given.
        width, height: upright frame size in px after rotation and cropping to even numbers;
            the size of every ``SourceFrame.rgb``.
        rotation: counter-clockwise degrees (0, 90, 180, 270) applied to the coded picture to
            make it upright, i.e. ``upright = np.rot90(coded, k=rotation // 90)``.
        time_base: video stream time base in seconds; every pts is in this unit.
        frame_count: the container's frame count, ``None`` when it does not say (MKV/WebM, raw).
        duration_s: video duration in seconds, ``None`` if unknown.
        average_rate: average frame rate in frames/s, ``None`` if unknown. Informational: frame
            times come from pts, never from this rate.
        audio: every audio stream, in container order.
        stream_index: container index of the video stream that is decoded.
        start_pts: pts of the first video frame as the container states it (``None`` if unknown).
        coded_width, coded_height: picture size as stored, before rotation and cropping.
        container_format: FFmpeg demuxer name, e.g. ``"mov,mp4,m4a,3gp,3g2,mj2"``.
        codec: video codec name, e.g. ``"h264"``.
        video_duration_s: the video stream's own duration in seconds (``None`` when only the
            container's total is known, which may include longer audio); ``duration_s`` falls
            back to that total.
        other_streams: the streams that are neither the video nor audio (data such as GoPro GPMF or a
            timecode, subtitles, attachments), described as ``"#2 data (tmcd)"``; the output has none.
        cut: the part of the video to use (:func:`with_cut`), None: all of it. Decoding yields only
            its frames, indexed from 0; the encoder shifts its timestamps (and the audio's) to start at 0.
        frame_count_estimate: frames estimated from the packets (``estimate_frame_count`` in
            :mod:`videostyle.media.decode`) where neither a count nor a duration is stated, else None.
    """

    path: Path
    width: int
    height: int
    rotation: int
    time_base: Fraction
    frame_count: int | None
    duration_s: float | None
    average_rate: Fraction | None
    audio: tuple[AudioStreamInfo, ...]
    stream_index: int = 0
    start_pts: int | None = None
    coded_width: int = 0
    coded_height: int = 0
    container_format: str = ""
    codec: str = ""
    video_duration_s: float | None = None
    other_streams: tuple[str, ...] = ()
    cut: Cut | None = None
    frame_count_estimate: int | None = None

    @property
    def length_s(self) -> float | None:
        """Seconds of video: the video stream's own duration, else the container's; None if unknown."""
        return self.video_duration_s if self.video_duration_s is not None else self.duration_s

    @property
    def frame_step(self) -> int:
        """Nominal duration of one frame in ``time_base`` units (>= 1); 25 fps when the rate is unknown.

        Used only to synthesise missing timestamps and the last frame's duration.
        """
        rate = self.average_rate or Fraction(25)
        return max(1, round(1 / (rate * self.time_base)))


class FFmpegLogCounter(logging.Handler):
    """Counts the lines FFmpeg logs (PyAV sends them to the ``libav.*`` loggers), keeping the last.

    A damaged picture that FFmpeg conceals raises no error: its log lines are the only sign, so
    :func:`videostyle.media.decode.iter_frames` compares :attr:`count` before and after a decode. The
    CLI hides the raw lines and ends with its own summary (``reported``: the count our warnings cover).
    """

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.count = 0
        self.reported = 0
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1  # under the handler's lock (Handler.handle)
        self.last = " ".join(record.getMessage().split())

    def mark_reported(self) -> None:
        self.reported = self.count


FFMPEG_LOG = FFmpegLogCounter()
logging.getLogger("libav").addHandler(FFMPEG_LOG)


def ffmpeg_errors_shown() -> None:
    """Make FFmpeg report errors to PyAV (default: silenced) so exceptions carry its reason.

    Leaves a level the application already chose alone.
    """
    if av.logging.get_level() is None:
        av.logging.set_level(av.logging.ERROR)


@contextlib.contextmanager
def ffmpeg_log() -> Iterator[list[tuple[int, str, str]]]:
    """Collect FFmpeg's log lines ``(level, component, message)`` raised in this thread.

    Captured lines are not printed; callers put the relevant one into their error message.
    """
    ffmpeg_errors_shown()
    with av.logging.Capture(local=True) as logs:
        yield logs


def ffmpeg_reason(exc: BaseException | None, logs: list[tuple[int, str, str]] | None = None) -> str:
    """One-line reason for an FFmpeg failure: the last error it logged, else the exception text.

    Returns ``""`` when there is neither.
    """
    for level, _name, message in reversed(logs or []):
        if level <= av.logging.ERROR and message.strip():
            return message.strip().replace("\n", " ")
    log = getattr(exc, "log", None)
    if log and log[2].strip():
        return log[2].strip().replace("\n", " ")
    if exc is None:
        return ""
    text = getattr(exc, "strerror", None) or str(exc)
    return " ".join(str(text).split())


def _is_isobmff(path: Path) -> bool:
    """True for an MP4/MOV-family file: its first box is ``ftyp`` (bytes 4..8)."""
    with open(path, "rb") as fh:
        return fh.read(12)[4:8] == b"ftyp"


def _has_moov(path: Path) -> bool:
    """Walk the top-level boxes looking for ``moov`` (the index); stops at a box cut short."""
    size_total = path.stat().st_size
    offset = 0
    with open(path, "rb") as fh:
        while offset + 8 <= size_total:
            fh.seek(offset)
            header = fh.read(16)
            size, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if size == 1 and len(header) >= 16:
                size = int.from_bytes(header[8:16], "big")
            if kind == b"moov":
                return offset + size <= size_total
            if size < 8:
                return False
            offset += size
    return False


def open_input(path: str | os.PathLike) -> av.container.InputContainer:
    """Open ``path`` for demuxing; ``InputError`` (one line) for a missing, unreadable or non-media file."""
    path = check_video_path(path)
    shown = str(path)
    with ffmpeg_log() as logs:
        try:
            return av.open(shown, "r")
        except PermissionError as exc:
            raise InputError(f"cannot read video file: {shown!r} (permission denied)") from exc
        except av.error.FFmpegError as exc:
            if _is_isobmff(path) and not _has_moov(path):
                # An MP4/MOV whose index (written last) is missing: the recording or copy was cut off.
                # Decided from the bytes, not FFmpeg's log: FFmpeg drops a log line that repeats an
                # earlier one ("moov atom not found" appeared only for the first such file).
                raise InputError(f"truncated video file (no MP4 index): {shown!r} "
                                 f"(FFmpeg: moov atom not found)") from exc
            # The error's own text, not the last log line: probing logs guesses such as
            # "Failed to find two consecutive MPEG audio frames." for random bytes.
            reason = " ".join(str(exc.strerror or exc).split())
            raise InputError(f"not a video file: {shown!r} (FFmpeg: {reason})") from exc


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Read ``path``'s streams and its first video frame (for rotation and the real picture size).

    Raises:
        InputError: missing path, a directory, not a media file (random bytes, text), an image
            given as a video, no video stream, truncated MP4 ("moov atom not found"), or no
            decodable video frame.
    """
    path = Path(path)
    shown = str(path)
    container = open_input(path)
    try:
        fmt = container.format.name
        vstream = _pick_video_stream(container)
        if vstream is None:
            found = ", ".join(f"{s.type} {_codec_name(s)}" for s in container.streams) or "none"
            raise InputError(f"no video stream in {shown!r} (streams found: {found})")
        codec = _codec_name(vstream)
        frame_count = vstream.frames or None  # 0 means "the container does not say"
        if _is_image(fmt, codec, frame_count):
            raise InputError(f"expected a video, got a still image: {shown!r} (format {fmt}, codec {codec})")
        first = _first_frame(container, vstream, shown)
        rotation = round(first.rotation / 90) * 90 % 360  # display matrices are multiples of 90 in practice
        coded_w, coded_h = first.width, first.height
        upright_w, upright_h = (coded_h, coded_w) if rotation % 180 else (coded_w, coded_h)
        if upright_w < 2 or upright_h < 2:
            raise InputError(f"video too small: {shown!r} is {upright_w}x{upright_h} px, need at least 2x2")
        time_base = vstream.time_base
        average_rate = vstream.average_rate or vstream.guessed_rate or None
        return VideoInfo(
            path=path,
            width=upright_w // 2 * 2,
            height=upright_h // 2 * 2,
            rotation=rotation,
            time_base=time_base,
            frame_count=frame_count,
            duration_s=_duration_s(vstream, container),
            average_rate=average_rate if average_rate else None,
            audio=tuple(_audio_info(s) for s in container.streams.audio if s.codec_context is not None),
            stream_index=vstream.index,
            start_pts=vstream.start_time,
            coded_width=coded_w,
            coded_height=coded_h,
            container_format=fmt,
            codec=codec,
            video_duration_s=_stream_duration_s(vstream),
            other_streams=tuple(_describe_stream(s) for s in container.streams
                                if s.type not in ("video", "audio")),
        )
    finally:
        container.close()


def _codec_name(stream) -> str:
    return stream.codec_context.name if stream.codec_context is not None else "unknown"


def _pick_video_stream(container):
    """First video stream that is not cover art (an MP3/M4A picture is a video stream with attached_pic)."""
    for stream in container.streams.video:
        if stream.codec_context is None:
            continue
        if stream.disposition & av.stream.Disposition.attached_pic:
            continue
        return stream
    return None


def _is_image(fmt: str, codec: str, frame_count: int | None) -> bool:
    names = set(fmt.split(","))
    if names & _IMAGE_DEMUXERS or any(n.endswith("_pipe") for n in names):
        return True
    return codec in _IMAGE_CODECS and frame_count == 1


def _first_frame(container, vstream, shown: str) -> av.VideoFrame:
    """Decode the first video frame; ``InputError`` when none decodes (truncated or corrupt file)."""
    last_exc: BaseException | None = None
    with ffmpeg_log() as logs:
        try:
            for packet in container.demux(vstream):
                try:
                    frames = vstream.decode(packet)
                except av.error.FFmpegError as exc:
                    last_exc = exc  # a damaged packet: later ones may still decode
                    continue
                if frames:
                    return frames[0]
        except av.error.FFmpegError as exc:
            last_exc = exc
        reason = ffmpeg_reason(last_exc, logs) or "the stream ended before any frame"
    raise InputError(f"no decodable video frame in {shown!r} (FFmpeg: {reason})")


def _stream_duration_s(stream) -> float | None:
    """The stream's own duration in seconds (MP4/MOV header or Matroska tag), else None."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return _tagged_duration(stream)


def _duration_s(stream, container) -> float | None:
    own = _stream_duration_s(stream)
    if own is not None:
        return own
    if container.duration is not None:
        return container.duration / av.time_base  # container clock is in microseconds
    return None


def _tagged_duration(stream) -> float | None:
    """Seconds from Matroska's per-stream "DURATION" tag, which holds the stream's *end* time."""
    match = _MKV_DURATION.match(stream.metadata.get("DURATION", "").strip())
    if not match:
        return None
    hours, minutes, seconds = match.groups()
    end_s = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    if stream.start_time is not None and stream.time_base is not None:
        return end_s - float(stream.start_time * stream.time_base)
    return end_s


def _audio_info(stream) -> AudioStreamInfo:
    cc = stream.codec_context
    start = None
    if stream.start_time is not None and stream.time_base is not None:
        start = float(stream.start_time * stream.time_base)
    return AudioStreamInfo(
        index=stream.index,
        codec=cc.name,
        sample_rate=cc.sample_rate,
        channels=cc.channels,
        language=stream.metadata.get("language"),
        copyable=cc.name in _COPYABLE_AUDIO,
        start_time_s=start,
        duration_s=_stream_duration_s(stream),
    )


def _describe_stream(stream) -> str:
    """``"#2 data (GoPro TCD)"``: the stream's index, type, and its codec and handler names where known."""
    codec = getattr(stream, "name", None) or (stream.codec_context.name if stream.codec_context else None)
    handler = stream.metadata.get("handler_name", "").strip()
    details = ", ".join(d for d in dict.fromkeys((codec, handler)) if d)
    return f"#{stream.index} {stream.type}" + (f" ({details})" if details else "")


def dropped_streams_note(info: VideoInfo) -> str | None:
    """One line naming the source streams the output leaves out (data, subtitles), or None."""
    if not info.other_streams:
        return None
    n = len(info.other_streams)
    return (f"{n} stream{'' if n == 1 else 's'} of the source {'is' if n == 1 else 'are'} not copied to the "
            f"output (only the video and audio are): {', '.join(info.other_streams)}")


def parse_time(text: str) -> float:
    """``"90"``, ``"1:30"``, ``"0:01:30.5"`` (SS, MM:SS, HH:MM:SS, each with optional decimals) -> seconds.

    Raises ``ValueError`` (one line) for anything else or a negative time.
    """
    parts = text.strip().split(":")
    try:
        if len(parts) > 3 or not all(parts):
            raise ValueError
        numbers = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"expected a time as SS, MM:SS or HH:MM:SS(.fff), got {text!r}") from None
    if any(n < 0 for n in numbers) or any(n >= 60 for n in numbers[1:]) or any(
            not p.replace(".", "", 1).isdigit() for p in parts):
        raise ValueError(f"expected a time as SS, MM:SS or HH:MM:SS(.fff), got {text!r}")
    seconds = 0.0
    for n in numbers:
        seconds = seconds * 60 + n
    return seconds


def with_cut(info: VideoInfo, start_s: float = 0.0, duration_s: float | None = None) -> VideoInfo:
    """``info`` limited to the frames from ``start_s`` (seconds after the first frame) for ``duration_s``
    seconds (None: to the end); ``info`` itself when neither cuts anything.

    Raises:
        InputError: a negative start, a duration that is not positive, or a start at or past the
            video's end where the duration is known (one line, with the duration).
    """
    if start_s < 0:
        raise InputError(f"--start must be at least 0 s, got {start_s:g}")
    if duration_s is not None and duration_s <= 0:
        raise InputError(f"--duration must be more than 0 s, got {duration_s:g}")
    if start_s == 0 and duration_s is None:
        return info
    length = info.length_s
    if length is not None and start_s >= length:
        raise InputError(f"--start {start_s:g} s is at or past the end of {str(info.path)!r} ({length:.3f} s long)")
    first = info.start_pts or 0
    start_pts = first + math.ceil(Fraction(start_s).limit_denominator(10**6) / info.time_base)
    end_pts = None
    if duration_s is not None:
        end_s = Fraction(start_s + duration_s).limit_denominator(10**6)
        end_pts = first + math.ceil(end_s / info.time_base)
    return replace(info, cut=Cut(start_s, duration_s, start_pts, end_pts))


def cut_seconds(info: VideoInfo) -> float | None:
    """Seconds of video the run covers: the cut's duration (bounded by the video's end), else the video's
    duration; None where unknown."""
    length = info.length_s
    if info.cut is None:
        return length
    if length is None:
        return info.cut.duration_s
    rest = max(0.0, length - info.cut.start_s)
    return rest if info.cut.duration_s is None else min(rest, info.cut.duration_s)
