"""Encode RGB frames to H.264 with the source's exact timestamps and all of its audio.

Convention:
    Frames are ``(H, W, 3)`` uint8 RGB in [0, 255] with even ``H`` and ``W``, each with an int
    ``pts`` in the given ``time_base`` (seconds), strictly increasing. Nothing assumes a constant
    frame rate: pts go to the encoder and the container unchanged (VFR-safe).
    Audio: AAC streams are copied packet for packet; any other codec is decoded and re-encoded
    as AAC. Every audio stream keeps its language tag and its timestamps, so an offset between
    audio and video in the source (non-zero start pts, audio starting later) is kept.
    The output is written to a temporary file beside it and renamed into place at the end, so a
    reader never sees half a file and a failed run leaves nothing behind.
"""

from __future__ import annotations

import errno
import glob
import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import av
import numpy as np

from videostyle.errors import OutputError
from videostyle.paths import check_not_an_input
from videostyle.media.probe import AudioStreamInfo, VideoInfo, ffmpeg_errors_shown, open_input

__all__ = ["OUTPUT_FORMATS", "check_output_path", "encode_video", "remove_partial_outputs"]

# Output extension -> FFmpeg muxer. All three take H.264 video and AAC audio.
OUTPUT_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
VIDEO_CODEC = "libx264"
PIXEL_FORMAT = "yuv420p"  # what every player decodes; needs even width and height
AUDIO_CODEC = "aac"
# Sample rates the AAC encoder accepts (ISO 14496-3 sampling frequency table); others -> 48 kHz.
_AAC_RATES = {96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350}
_AAC_FALLBACK_RATE = 48000
# libx264's colour tags for the BT.601 limited-range conversion that swscale applies to RGB input
# (AVCOL_SPC_SMPTE170M, AVCOL_RANGE_MPEG), so players do not guess BT.709 for HD sizes.
_COLORSPACE_SMPTE170M = 6
_COLOR_RANGE_MPEG = 1


def check_output_path(output_path: str | os.PathLike, *, input_path: str | os.PathLike | None = None) -> Path:
    """Check that ``output_path`` can be written, before any work is done.

    Returns:
        ``Path(output_path)``.
    Raises:
        OutputError: unsupported extension (supported: ``OUTPUT_FORMATS``), the directory is
            missing, not a directory or not writable, the path is a directory, or it is the input.
    """
    path = Path(output_path)
    shown = str(path)
    ext = path.suffix.lower()
    if ext not in OUTPUT_FORMATS:
        supported = ", ".join(OUTPUT_FORMATS)
        got = repr(ext) if ext else "(none)"
        raise OutputError(f"unsupported output extension {got} in {shown!r}: expected one of {supported}")
    if input_path is not None:
        check_not_an_input(path, [("input video", input_path)])
    parent = path.parent
    if not parent.exists():
        raise OutputError(f"output directory does not exist: {str(parent)!r}")
    if not parent.is_dir():
        raise OutputError(f"output directory is not a directory: {str(parent)!r}")
    if path.is_dir():
        raise OutputError(f"output path is a directory: {shown!r}")
    try:
        # Creating a file is the only reliable test: os.access ignores read-only mounts and root.
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise OutputError(f"output directory is not writable: {str(parent)!r} ({exc.strerror})") from exc
    return path


# libx264's presets and its --crf range: checked before a run starts (the encoder opens only after work).
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")


def check_encoder_options(crf: int, preset: str) -> None:
    """``ValueError`` (one line) for a --crf or --preset libx264 would refuse."""
    if not 0 <= crf <= 51:
        raise ValueError(f"--crf must be between 0 and 51, got {crf}")
    if preset not in X264_PRESETS:
        raise ValueError(f"--preset must be one of {', '.join(X264_PRESETS)}; got {preset!r}")


def _partial_affixes(out_path: Path) -> dict[str, str]:
    """Name parts of the temp file an encode writes beside ``out_path``: ``.STEM.XXXX.partial.EXT``."""
    return {"prefix": f".{out_path.stem}.", "suffix": f".partial{out_path.suffix}"}


def remove_partial_outputs(output_path: str | os.PathLike) -> int:
    """Delete temp files that encodes of ``output_path`` killed before they finished left beside it.

    Only for a caller that knows no other encode of the same output runs. Returns how many went.
    """
    path = Path(output_path)
    affixes = _partial_affixes(path)
    removed = 0
    for stale in path.parent.glob(f"{glob.escape(affixes['prefix'])}*{glob.escape(affixes['suffix'])}"):
        try:
            stale.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def encode_video(
    frames: Iterable[tuple[np.ndarray, int]],
    *,
    output_path: str | os.PathLike,
    time_base: Fraction,
    source: VideoInfo | None = None,
    crf: int = 18,
    preset: str = "medium",
    average_rate: Fraction | None = None,
    audio: bool = True,
) -> None:
    """Encode ``frames`` to H.264 (yuv420p) in MP4/MOV/MKV with ``source``'s audio streams.

    Args:
        frames: ``(rgb, pts)`` pairs in presentation order; ``rgb`` ``(H, W, 3)`` uint8 with even
            ``H, W``, all the same size; ``pts`` int in ``time_base``, strictly increasing.
            Consumed lazily: memory stays bounded however long the video is.
        output_path: ``.mp4``/``.m4v``, ``.mov`` or ``.mkv``; replaced atomically at the end.
        time_base: unit of the pts, seconds (normally ``source.time_base``).
        source: the probed source; its audio streams are muxed (unless ``audio=False``) and its
            average rate is the default ``average_rate``. ``None``: video only.
        crf: libx264 constant rate factor, 0 (lossless) .. 51; 18 is visually lossless.
        preset: libx264 speed/size trade-off, ``"ultrafast"`` .. ``"veryslow"``.
        average_rate: nominal frames/s written as the stream's rate (metadata and x264's rate
            control); timestamps are never derived from it.
        audio: ``False`` leaves the source's audio out.

    Audio span: a full render (video reaching the source video's end, within one frame) keeps
    every audio packet; a shorter render cuts the audio where its last frame ends.
    A ``source.cut`` (``--start``/``--duration``): the first frame's pts becomes 0 and the audio moves
    with it; audio from before that frame is left out (a copied AAC stream starts at its first packet
    from there, at most one packet, ~21 ms, later) and it ends with the last frame.

    Raises:
        OutputError: unsupported extension, missing or read-only directory, output == input,
            disk full.
        ValueError: no frames, a frame of the wrong shape/dtype/size, or pts not increasing.
        InputError: the source can no longer be read for its audio.
    """
    out_path = check_output_path(output_path, input_path=source.path if source is not None else None)
    if average_rate is None and source is not None:
        average_rate = source.average_rate
    time_base = Fraction(time_base)
    frame_iter = iter(frames)
    try:
        first = next(frame_iter)
    except StopIteration:
        raise ValueError("encode_video got no frames") from None
    height, width = _check_frame(first[0], None)
    audio_streams = source.audio if (source is not None and audio) else ()
    cut = source.cut if source is not None else None
    # A cut (--start) starts at 0: every video pts, and the audio, moves back by the first frame's pts.
    shift = int(first[1]) if cut is not None else 0

    ffmpeg_errors_shown()
    src = open_input(source.path) if audio_streams else None
    try:
        fd, tmp_name = tempfile.mkstemp(dir=out_path.parent, **_partial_affixes(out_path))
    except OSError as exc:
        if src is not None:
            src.close()
        raise _as_output_error(exc, out_path) from exc
    os.close(fd)
    tmp_path = Path(tmp_name)
    # mkstemp makes the file owner-only (0600); a finished video should get the usual permissions.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        out = av.open(str(tmp_path), "w", format=OUTPUT_FORMATS[out_path.suffix.lower()])
        try:
            # Every stream is added before the first mux: adding one later gave "Cannot rebase to
            # zero time" and once a SIGFPE (docs/ARCHITECTURE.md).
            vstream = _add_video_stream(out, width, height, time_base, average_rate, crf, preset)
            tracks = [_AudioTrack.create(out, src, a) for a in audio_streams]
            feeder = _AudioFeeder(out, src, tracks, offset=shift * time_base) if tracks else None
            video = _VideoMuxer(out, vstream, feeder, dts_timed=out.format.name in ("mp4", "mov"))
            # One frame is held back so each frame's duration (next pts - pts) is known when it is
            # encoded; without durations the muxer guessed the last one (a VFR clip lost 22 ms).
            held: tuple[np.ndarray, int] | None = None
            for rgb, pts in _chain(first, frame_iter):
                _check_frame(rgb, (height, width))
                pts = int(pts) - shift
                if held is not None:
                    if pts <= held[1]:
                        raise ValueError(f"frame pts must increase strictly: {pts} after {held[1]}")
                    video.encode(held[0], held[1], pts - held[1])
                held = (rgb, pts)
            last_pts = held[1]
            step = _frame_step(average_rate, time_base)
            end_pts = last_pts + _last_frame_duration(source, last_pts + shift, step, time_base)
            if cut is not None and cut.end_pts is not None and cut.end_pts - shift > last_pts:
                end_pts = min(end_pts, cut.end_pts - shift)  # the last frame shows until the cut's end
            video.encode(held[0], last_pts, end_pts - last_pts)
            video.finish(end_pts)
            if feeder is not None:
                # A cut's audio ends with its video; a whole video's as _audio_end_s says.
                feeder.finish(float(end_pts * time_base) if cut is not None else
                              _audio_end_s(source, float(end_pts * time_base), float(step * time_base)))
        except BaseException:
            _close_quietly(out)
            raise
        out.close()  # writes the MP4 index (moov): may fail with a full disk too
        os.replace(tmp_path, out_path)
    except OSError as exc:
        _remove(tmp_path)
        error = _as_output_error(exc, out_path)
        if error is exc:
            raise
        raise error from exc
    except BaseException:
        _remove(tmp_path)
        raise
    finally:
        if src is not None:
            src.close()


def _chain(first, rest: Iterator):
    yield first
    yield from rest


def _check_frame(rgb: np.ndarray, size: tuple[int, int] | None) -> tuple[int, int]:
    """Validate one ``(H, W, 3)`` uint8 frame with even sides (and ``(H, W) == size``); return ``(H, W)``."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        got = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ValueError(f"frames must be (H, W, 3) uint8 RGB arrays, got {got}")
    h, w = rgb.shape[:2]
    if h % 2 or w % 2:
        raise ValueError(f"frame size must be even for {PIXEL_FORMAT}, got {w}x{h}")
    if size is not None and (h, w) != size:
        raise ValueError(f"all frames must be {size[1]}x{size[0]}, got {w}x{h}")
    return h, w


def _add_video_stream(out, width, height, time_base, average_rate, crf, preset):
    # No rate= here: with add_stream("libx264", rate=24) a VFR source's pts were quantised to
    # 1/24 s and the muxer failed with "non monotonically increasing dts" (docs/ARCHITECTURE.md). The codec
    # time_base must be the pts unit too, or libx264 rescales them.
    stream = out.add_stream(VIDEO_CODEC)
    stream.width = width
    stream.height = height
    stream.pix_fmt = PIXEL_FORMAT
    stream.time_base = time_base
    stream.codec_context.time_base = time_base
    if average_rate:
        stream.codec_context.framerate = Fraction(average_rate)
    stream.codec_context.colorspace = _COLORSPACE_SMPTE170M
    stream.codec_context.color_range = _COLOR_RANGE_MPEG
    stream.options = {"crf": str(crf), "preset": preset}
    return stream


def _source_end_s(source: VideoInfo) -> Fraction | None:
    """Where the source video stops showing, seconds on its own clock; None if unknown."""
    duration_s = source.length_s
    if duration_s is None:
        return None
    return (source.start_pts or 0) * source.time_base + Fraction(duration_s)


def _last_frame_duration(source: VideoInfo | None, last_pts: int, step: int, time_base: Fraction) -> int:
    """Display time of the last frame in time_base units.

    Until the source video's end when that lies less than two nominal frames after ``last_pts``
    (a full render of a VFR clip keeps its exact length); otherwise one nominal frame ``step``.
    """
    source_end_s = _source_end_s(source) if source is not None else None
    if source_end_s is not None:
        end_pts = round(source_end_s / time_base)
        if 0 < end_pts - last_pts < 2 * step:
            return end_pts - last_pts
    return step


def _frame_step(average_rate: Fraction | None, time_base: Fraction) -> int:
    """One nominal frame duration in ``time_base`` units (>= 1); 25 fps when the rate is unknown."""
    rate = Fraction(average_rate) if average_rate else Fraction(25)
    return max(1, round(1 / (rate * time_base)))


def _audio_end_s(source: VideoInfo, video_end_s: float, one_frame_s: float) -> float | None:
    """Where to cut the audio: ``None`` (keep all) for a full render, else the video's end.

    A render is full when its video ends no more than one frame before the source video does.
    """
    source_end_s = _source_end_s(source)
    if source_end_s is None:
        return None
    return None if video_end_s >= float(source_end_s) - one_frame_s else video_end_s


class _VideoMuxer:
    """Encodes frames and muxes the packets, each preceded by the audio up to its decode time.

    Packet durations: libx264 (av 18.1) leaves ``packet.duration`` 0, so the muxer would guess
    the last frame's length. Each packet gets its frame's duration (pts -> duration of frames
    still inside the encoder); the last packet is held back, and for MP4/MOV (whose track length
    is last dts - first dts + last duration) its duration is set so the track ends exactly where
    the last frame stops showing (measured: a VFR clip came out 20 ms short without it).
    """

    def __init__(self, out, stream, feeder: "_AudioFeeder | None", *, dts_timed: bool):
        self._out = out
        self._stream = stream
        self._feeder = feeder
        self._dts_timed = dts_timed
        self._durations: dict[int, int] = {}
        self._held = None  # last packet, muxed on the next one or in finish()
        self._first_pts: int | None = None  # first frame's pts
        self._first_dts: int | None = None  # first packet's dts

    def encode(self, rgb: np.ndarray, pts: int, duration: int) -> None:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = pts
        frame.time_base = self._stream.codec_context.time_base
        self._durations[pts] = duration
        if self._first_pts is None:
            self._first_pts = pts
        self._mux(self._stream.encode(frame))

    def finish(self, end_pts: int) -> None:
        """Flush the encoder; ``end_pts`` is where the last frame stops showing (codec time_base)."""
        self._mux(self._stream.encode(None))
        if self._held is not None:
            if self._dts_timed and self._held.dts is not None and self._first_dts is not None:
                # MP4 track length = (last dts - first dts) + last sample's duration; make it
                # equal to the presentation span end_pts - first pts.
                span = end_pts - self._first_pts
                duration = span - (self._held.dts - self._first_dts)
                if duration > 0:
                    self._held.duration = duration
            self._mux_one(self._held)
            self._held = None

    def _mux(self, packets) -> None:
        for packet in packets:
            duration = self._durations.pop(packet.pts, None)
            if duration is not None:
                packet.duration = duration
            if self._first_dts is None:
                self._first_dts = packet.dts
            if self._held is not None:
                self._mux_one(self._held)
            self._held = packet

    def _mux_one(self, packet) -> None:
        if self._feeder is not None and packet.dts is not None:
            self._feeder.mux_until(float(packet.dts * packet.time_base))
        self._out.mux(packet)


@dataclass
class _AudioTrack:
    """One source audio stream, its output stream, and whether it is transcoded (else copied)."""

    info: AudioStreamInfo
    in_stream: object
    out_stream: object
    transcode: bool
    out_rate: int

    @classmethod
    def create(cls, out, src, info: AudioStreamInfo) -> "_AudioTrack":
        in_stream = src.streams[info.index]
        if info.copyable:
            out_stream = out.add_stream_from_template(in_stream)
            rate = info.sample_rate
        else:
            rate = info.sample_rate if info.sample_rate in _AAC_RATES else _AAC_FALLBACK_RATE
            out_stream = out.add_stream(AUDIO_CODEC, rate=rate)
            layout = in_stream.codec_context.layout
            # The AAC encoder needs a named layout; an unnamed one of n channels gets FFmpeg's default.
            # An unspecified-order layout has a name too ("1 channels": mono PCM in AVI/MKV from a
            # webcam recorder), which the AAC encoder rejects: its channels are all "NONE".
            named = layout.name and not any(ch.name == "NONE" for ch in layout.channels)
            out_stream.layout = layout.name if named else _default_layout(info.channels)
            out_stream.time_base = Fraction(1, rate)
        if info.language:
            out_stream.metadata["language"] = info.language
        return cls(info, in_stream, out_stream, transcode=not info.copyable, out_rate=rate)


def _default_layout(channels: int) -> str:
    return {1: "mono", 2: "stereo"}.get(channels, f"{channels}c")


class _AudioFeeder:
    """Reads the source's audio packets lazily (one demux over all audio streams, file order) and
    muxes them up to a given time, so audio is interleaved with video without buffering it.

    ``offset``: seconds of the source clock that become 0 in the output (a cut); audio before it is
    left out. Times given to :meth:`mux_until` and :meth:`finish` are on the output's clock."""

    def __init__(self, out, src, tracks: list[_AudioTrack], *, offset: Fraction = Fraction(0)):
        self._out = out
        self._offset = Fraction(offset)
        self._tracks = {t.in_stream.index: t for t in tracks}
        self._packets = src.demux([t.in_stream for t in tracks])
        self._pending = None  # one packet read ahead: the first one past the last mux_until time
        self._done = False
        self._next_pts: dict[int, int] = {}  # transcoded stream -> next sample's pts (1/rate units)

    def _peek(self):
        if self._pending is None and not self._done:
            while True:
                try:
                    packet = next(self._packets)
                except StopIteration:
                    self._done = True
                    return None
                except av.error.FFmpegError:
                    # Damaged audio past this point: keep what was muxed (the video is what matters).
                    self._done = True
                    return None
                if packet.size == 0:  # demux's end-of-stream flush packets: nothing to copy
                    continue
                self._pending = packet
                break
        return self._pending

    @staticmethod
    def _time_s(packet) -> float:
        ts = packet.pts if packet.pts is not None else packet.dts
        return float(ts * packet.time_base) if ts is not None else float("-inf")

    def mux_until(self, t_s: float | None) -> None:
        """Mux every audio packet that starts before ``t_s`` seconds (``None``: all of them)."""
        while True:
            packet = self._peek()
            if packet is None or (t_s is not None and self._time_s(packet) - self._offset >= t_s):
                return
            self._pending = None
            self._mux(packet)

    def finish(self, end_s: float | None) -> None:
        """Mux the rest up to ``end_s`` (``None``: to the end) and flush the AAC encoders."""
        self.mux_until(end_s)
        for track in self._tracks.values():
            if track.transcode:
                try:
                    for frame in track.in_stream.decode(None):
                        self._encode(track, frame)
                except av.error.FFmpegError:
                    pass  # a damaged tail of audio is dropped, not fatal
                self._out.mux(track.out_stream.encode(None))

    def _mux(self, packet) -> None:
        track = self._tracks[packet.stream.index]
        if not track.transcode:
            if self._offset:
                if self._time_s(packet) < self._offset:
                    return  # before the cut
                back = round(self._offset / packet.time_base)
                packet.pts = packet.pts - back if packet.pts is not None else None
                packet.dts = packet.dts - back if packet.dts is not None else None
            packet.stream = track.out_stream
            self._out.mux(packet)
            return
        try:
            frames = track.in_stream.decode(packet)
        except av.error.FFmpegError:
            return  # one damaged audio packet: a few ms of silence rather than a failed render
        for frame in frames:
            self._encode(track, frame)

    def _encode(self, track: _AudioTrack, frame) -> None:
        # Timestamps in 1/rate so the encoder's resampler and the muxer keep the source offset;
        # a frame without pts continues where the previous one ended.
        key = track.in_stream.index
        if frame.pts is not None and frame.time_base is not None:
            if self._offset and frame.pts * frame.time_base < self._offset:
                return  # before the cut
            pts = round((frame.pts * frame.time_base - self._offset) * track.out_rate)
        else:
            pts = self._next_pts.get(key, 0)
        pts = max(pts, self._next_pts.get(key, pts))  # never step back (overlapping packets)
        self._next_pts[key] = pts + round(frame.samples * track.out_rate / frame.sample_rate)
        frame.pts = pts
        frame.time_base = Fraction(1, track.out_rate)
        self._out.mux(track.out_stream.encode(frame))


def _as_output_error(exc: OSError, out_path: Path) -> OSError | OutputError:
    """An OutputError for what the user can fix (space, permissions); other errors: ``exc`` itself."""
    shown = str(out_path)
    if exc.errno == errno.ENOSPC:
        return OutputError(f"disk full while writing {shown!r} (No space left on device)")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"cannot write {shown!r} ({exc.strerror})")
    return exc


def _close_quietly(container) -> None:
    try:
        container.close()
    except Exception:
        pass


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
