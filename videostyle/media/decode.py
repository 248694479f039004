"""Decode a probed video into upright, even-sized RGB frames with strictly increasing timestamps.

Convention:
    ``SourceFrame.rgb`` is ``(H, W, 3)`` uint8 RGB in [0, 255], upright (the display rotation is
    applied) and cropped to even ``H`` and ``W`` (last row/column dropped), i.e. exactly
    ``(info.height, info.width, 3)``. ``pts`` is an int in ``info.time_base`` seconds.

Damaged input is decoded as far as it goes: a packet the decoder rejects is skipped; when the
file ends early or cannot be read further the frames decoded so far are kept and a
:class:`TruncatedVideoWarning` says how many. Only a file with no decodable frame at all raises.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Iterator

import av
import numpy as np

from videostyle.media.background import BackgroundIterator
from videostyle.errors import InputError
from videostyle.media.probe import FFMPEG_LOG, VideoInfo, ffmpeg_errors_shown, ffmpeg_reason, open_input

__all__ = ["SourceFrame", "TruncatedVideoWarning", "SeekError", "iter_frames", "keyframes", "estimate_frame_count",
           "FramePrefetcher"]

# After this many packets in a row that the decoder rejects, the rest of the file is taken to be
# garbage (a cut-off download yields nothing but errors): stop instead of grinding through it.
MAX_CONSECUTIVE_BAD_PACKETS = 50


class TruncatedVideoWarning(UserWarning):
    """The video ended early or had undecodable parts; the frames that decoded were kept."""


class SeekError(InputError):
    """A seek did not land on the keyframe :func:`keyframes` named (decode from the start instead)."""


@dataclass(frozen=True)
class SourceFrame:
    """One decoded source frame.

    Attributes:
        index: 0-based position in decode (= presentation) order.
        pts: presentation time in ``VideoInfo.time_base`` units; strictly increasing. Synthesised
            from the previous frame + one nominal frame duration when the stream has none (raw
            ``.h264``) or repeats / goes back in time.
        time_s: ``pts * time_base`` in seconds.
        rgb: ``(H, W, 3)`` uint8 RGB, upright, even ``H`` and ``W``.
    """

    index: int
    pts: int
    time_s: float
    rgb: np.ndarray


def iter_frames(info: VideoInfo, *, start: int = 0,
                seek: tuple[int, int] | None = None) -> Iterator[SourceFrame]:
    """Yield every frame of ``info.path`` in order, beginning at frame index ``start``.

    Frames before ``start`` are still decoded (so index and pts stay exactly what a full pass
    gives) but not converted to RGB. Closing the generator early closes the file.
    ``seek``: a keyframe ``(index, pts)`` from :func:`keyframes` with ``index <= start``: decoding
    starts there instead of at frame 0 (a long video's late segment). Raises :class:`SeekError`,
    before yielding anything, when the first frame decoded there is not that keyframe.
    ``info.cut`` (:func:`~videostyle.media.probe.with_cut`): only the frames with pts in its range are
    yielded, indexed from 0; the frames before it are decoded (no seek: exact whatever the keyframes)
    but not converted.

    Warns:
        TruncatedVideoWarning: when packets could not be decoded, reading stopped on an error,
            or the file ended before the frame count / duration it states; says how many frames
            were decoded.
    Raises:
        InputError: no frame could be decoded at all.
        ValueError: ``start < 0``.
    """
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    shown = str(info.path)
    logged_before = FFMPEG_LOG.count  # FFmpeg's lines during this decode: the sign of concealed damage
    container = open_input(info.path)
    index = 0
    last_pts: int | None = None
    bad_packets = 0
    cut = info.cut  # frames before its start are skipped; index 0 is its first frame
    stopped_by: BaseException | None = None  # the error that ended reading early, if any
    reason: str | None = None  # what went wrong ("FFmpeg: <its words>" or ours), if anything
    try:
        stream = container.streams[info.stream_index]
        # Slice threads only: with frame threads (av 18.1, "AUTO"/"FRAME") a damaged packet's error
        # is swallowed and the frames around it are silently lost (measured: 31 instead of 33 frames
        # from a cut-off MP4), and on 2 cores it was no faster (RGB conversion dominates).
        stream.thread_type = "SLICE"
        next_pts = _PtsFixer(first=info.start_pts or 0, step=info.frame_step)
        seek_pts = None
        if seek is not None and 0 < seek[0] <= start:
            try:
                container.seek(seek[1], stream=stream, backward=True, any_frame=False)
            except av.error.FFmpegError as exc:
                raise SeekError(f"cannot seek in {shown!r} to pts {seek[1]} ({ffmpeg_reason(exc)})") from exc
            index, seek_pts = seek
            next_pts = _PtsFixer(first=seek_pts, step=info.frame_step)
        ffmpeg_errors_shown()
        # No av.logging.Capture here: it is per thread and would stay active (swallowing the
        # consumer's FFmpeg logs) while this generator is suspended at a yield.
        decoded = _TolerantDecoder(container, stream)
        for frame in decoded:
            if seek_pts is not None:  # the first frame after a seek must be the keyframe asked for
                if frame.pts is not None and frame.pts < seek_pts:
                    continue  # an open GOP's leading frames, shown before the keyframe
                if frame.pts != seek_pts:
                    raise SeekError(f"seeking in {shown!r} to pts {seek_pts} gave pts {frame.pts}")
                seek_pts = None
            pts = next_pts(frame.pts if frame.pts is not None else frame.dts)
            if cut is not None and pts < cut.start_pts:
                continue  # before the cut: decoded (the next frames need it), not counted
            if cut is not None and cut.end_pts is not None and pts >= cut.end_pts:
                break
            if index >= start:
                time_s = float(pts * info.time_base)
                yield SourceFrame(index=index, pts=pts, time_s=time_s, rgb=_to_rgb(frame, info))
            index += 1
            last_pts = pts
        bad_packets, stopped_by = decoded.bad_packets, decoded.error
        if stopped_by is not None or decoded.last_bad is not None:
            reason = f"FFmpeg: {ffmpeg_reason(stopped_by or decoded.last_bad)}"
    finally:
        container.close()
    if index == 0 and cut is not None and reason is None:
        raise InputError(f"no video frame in {shown!r} from {cut.start_s:g} s on (--start): the video ends "
                         f"before it")
    if index == 0:
        raise InputError(f"no decodable video frame in {shown!r} ({reason or 'the stream has no frames'})")
    if reason is None and cut is None:  # a cut ends where it was asked to, not where the file says
        reason = _early_end(info, index, last_pts)
    logged = FFMPEG_LOG.count - logged_before
    if reason is None and logged:
        # FFmpeg concealed the damage (no packet was rejected): its log lines are the only sign.
        expected = f" of {info.frame_count} expected" if info.frame_count else ""
        FFMPEG_LOG.mark_reported()
        warnings.warn(
            f"video {shown!r} is damaged: decoded {index} frames{expected}, but FFmpeg reported "
            f"{logged} error{'' if logged == 1 else 's'} in them (last: {FFMPEG_LOG.last}); damaged parts "
            f"may show blocks or smears",
            TruncatedVideoWarning,
            stacklevel=2,
        )
    if reason is not None:
        FFMPEG_LOG.mark_reported()
        expected = f" of {info.frame_count} expected" if info.frame_count else ""
        skipped = f", skipped {bad_packets} damaged packets" if bad_packets else ""
        ending = ", then reading stopped" if stopped_by is not None else ""
        warnings.warn(
            f"video {shown!r} is damaged or truncated: decoded {index} frames{expected}{skipped}{ending} "
            f"({reason})",
            TruncatedVideoWarning,
            stacklevel=2,
        )


def keyframes(info: VideoInfo) -> list[tuple[int, int]] | None:
    """``(index, pts)`` of every keyframe, read from the packets alone (no decoding: ~50-90 us a frame).

    None when packet timestamps cannot give exact frame indices (a packet without pts, repeated pts,
    a packet count that differs from the container's frame count, or a read error): then only a
    decode from the start knows them.
    """
    container = open_input(info.path)
    try:
        stream = container.streams[info.stream_index]
        packets = []
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the flush packets demux() ends with
            if packet.pts is None:
                return None
            packets.append((packet.pts, packet.is_keyframe))
    except av.error.FFmpegError:
        return None
    finally:
        container.close()
    packets.sort()
    if len({pts for pts, _ in packets}) != len(packets) or not packets:
        return None
    if (info.frame_count and len(packets) != info.frame_count) or packets[0][0] != (info.start_pts or 0):
        return None
    return [(i, pts) for i, (pts, key) in enumerate(packets) if key]


# Packets read at most to estimate a frame count (~50-90 us each: about a second); past this the count
# is extrapolated from the bytes read.
ESTIMATE_MAX_PACKETS = 20_000


def estimate_frame_count(info: VideoInfo, *, max_packets: int = ESTIMATE_MAX_PACKETS) -> int | None:
    """Frames in ``info`` (its cut, if any) counted from the video packets, without decoding: for a
    container that states neither a frame count nor a duration (a browser's H.264 WebM).

    One packet is one frame. After ``max_packets`` packets the count is extrapolated by the share of
    the file read (byte position), so the cost stays bounded; None when nothing can be read.
    """
    cut = info.cut
    try:
        container = open_input(info.path)
    except InputError:
        return None
    count = seen = 0
    last_pos = None
    try:
        stream = container.streams[info.stream_index]
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the flush packets demux() ends with
            seen += 1
            pts = packet.pts if packet.pts is not None else packet.dts
            if cut is not None and pts is not None and cut.end_pts is not None and pts >= cut.end_pts:
                break
            if cut is None or pts is None or pts >= cut.start_pts:
                count += 1
            if packet.pos is not None and packet.pos > 0:
                last_pos = packet.pos
            if seen >= max_packets:
                if last_pos:  # the unread part of the file holds packets alike
                    count += round(seen * (os.path.getsize(info.path) / last_pos - 1))
                break
    except av.error.FFmpegError:
        pass  # a damaged tail: the packets read so far
    finally:
        container.close()
    return count or None


def _early_end(info: VideoInfo, decoded: int, last_pts: int | None) -> str | None:
    """Why a decode that raised no error still looks cut short, or None.

    A file cut at a packet boundary just ends. Compared with the frame count the index lists
    (MP4/MOV), else with the stream's stated duration (Matroska tags) allowing one frame.
    """
    if info.frame_count:
        if decoded < info.frame_count:
            return f"the file ended after {decoded} of the {info.frame_count} frames its index lists"
        return None
    if info.video_duration_s is None or last_pts is None:
        return None
    step = info.frame_step
    decoded_end_s = float((last_pts + step) * info.time_base)
    stated_end_s = float((info.start_pts or 0) * info.time_base) + info.video_duration_s
    if decoded_end_s < stated_end_s - float(step * info.time_base):
        return f"the file ended at {decoded_end_s:.3f} s of the {stated_end_s:.3f} s it states"
    return None


class _TolerantDecoder:
    """Iterate decoded frames of ``stream``, skipping packets the decoder rejects.

    After iteration, ``bad_packets`` counts rejected packets and ``error`` holds the exception
    that ended reading early (demuxer error or too many bad packets in a row), else ``None``.
    """

    def __init__(self, container, stream):
        self._container = container
        self._stream = stream
        self.bad_packets = 0
        self.error: BaseException | None = None
        self.last_bad: BaseException | None = None

    def __iter__(self) -> Iterator[av.VideoFrame]:
        stream = self._stream
        packets = self._container.demux(stream)
        consecutive_bad = 0
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return  # demux() ends with empty packets that flushed the decoder already
            except av.error.FFmpegError as exc:
                self.error = exc  # the container cannot be read further (cut-off MKV/fragmented MP4)
                break
            try:
                frames = stream.decode(packet)
            except av.error.FFmpegError as exc:
                self.bad_packets += 1
                consecutive_bad += 1
                self.last_bad = exc
                if consecutive_bad >= MAX_CONSECUTIVE_BAD_PACKETS:
                    self.error = exc
                    break
                continue
            consecutive_bad = 0
            yield from frames
        # Reading stopped on an error: frames still queued in the decoder are valid, flush them.
        try:
            yield from stream.decode(None)
        except av.error.FFmpegError:
            pass


class _PtsFixer:
    """Make pts strictly increasing: a missing or non-increasing pts becomes previous + ``step``.

    ``step`` is one nominal frame duration in time_base units. A source whose timestamps merely
    repeat for a frame or two drifts by at most that many frames, and snaps back as soon as its
    own pts pass the synthesised ones.
    """

    def __init__(self, *, first: int, step: int):
        self._first = first
        self._step = step
        self._prev: int | None = None

    def __call__(self, pts: int | None) -> int:
        if self._prev is None:
            fixed = self._first if pts is None else pts
        elif pts is None or pts <= self._prev:
            fixed = self._prev + self._step
        else:
            fixed = pts
        self._prev = fixed
        return fixed


def _to_rgb(frame: av.VideoFrame, info: VideoInfo) -> np.ndarray:
    """``(info.height, info.width, 3)`` uint8 upright RGB from a decoded frame."""
    coded_w, coded_h = info.coded_width or frame.width, info.coded_height or frame.height
    if (frame.width, frame.height) != (coded_w, coded_h):
        # A mid-stream resolution change: scale to the probed size so every frame matches.
        rgb = frame.to_ndarray(format="rgb24", width=coded_w, height=coded_h)
    else:
        rgb = frame.to_ndarray(format="rgb24")
    if info.rotation:
        rgb = np.rot90(rgb, k=info.rotation // 90)
    return np.ascontiguousarray(rgb[: info.height, : info.width])


class FramePrefetcher(BackgroundIterator[SourceFrame]):
    """Decode ahead in a background thread so decoding overlaps the consumer's work.

    Iterating yields the same items as ``frames``, in order. At most ``depth`` decoded frames wait
    in memory (a 1080p RGB frame is 6 MB). An exception raised by ``frames`` is re-raised in the
    consumer at the point where the next item would have come. ``close()`` (or leaving the
    ``with`` block) stops the thread within one frame's decode time, also when the consumer stopped
    early, and closes ``frames`` in the thread that iterates it.

    Example::

        with FramePrefetcher(iter_frames(info)) as frames:
            for frame in frames:
                ...
    """

    def __init__(self, frames: Iterator[SourceFrame], *, depth: int = 8):
        super().__init__(frames, depth=depth, name="videostyle-decode", phase="decode")
