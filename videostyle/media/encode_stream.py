"""Encode the output while the optimiser runs: each frame goes to the encoder once it is journaled.

Encoding after the last frame, from the journaled PNGs, cost 52 ms per frame at 1280x720 (x264
medium, 2 CPU cores): a tenth of a 0.5 s GPU frame, and about a minute of waiting per thousand
frames at the end of a run. :class:`StreamingEncoder` runs the encoder on a thread instead; frames
journaled by an earlier, interrupted run are read back from the work dir first.

The encoder still sees only journaled frames, in order, so nothing about resuming changes: when the
run stops early (Ctrl-C, an error), the partial output is removed and the next run encodes from the
journal. When the encoder itself fails (the output's disk is full, say), the run goes on; the caller
then encodes from the journal once more, which reports the error if it persists.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from videostyle import images
from videostyle.store.workdir import WorkDir
from videostyle.timing import PHASES
from videostyle.media.encode import encode_video
from videostyle.media.probe import VideoInfo

_END = object()
_ABORT = object()


class _Aborted(Exception):
    """Raised inside the encoder's frame iterator to stop it; the encoder then removes its temp file."""


class StreamingEncoder:
    """Encodes ``work``'s frames into ``output`` on a thread: the frames journaled in the work dir when
    it starts, then each frame given to :meth:`add` (call it in index order, once the frame is
    journaled). End with :meth:`finish` (the output is complete) or :meth:`abort` (no output).

    Args:
        out_size: ``(W, H)`` px of the encoded frames (frames are resized on the encoder's thread).
        crf, preset: libx264's, as :func:`~videostyle.media.encode.encode_video` takes them.
        before_frame: called on the encoder's thread with each frame's index before it is encoded
            (the test kill hook).
        max_queued: frames waiting for the encoder; a full queue makes :meth:`add` wait, so a slow
            encoder slows the run down instead of filling memory.
    """

    def __init__(self, work: WorkDir, info: VideoInfo, output: Path, out_size: tuple[int, int], *,
                 crf: int, preset: str, before_frame: Callable[[int], None] | None = None,
                 max_queued: int = 8):
        self._work = work
        self._info = info
        self._output = output
        self._out_size = out_size
        self._options = dict(crf=crf, preset=preset)
        self._before_frame = before_frame
        self._journaled_before = work.finished_count
        self._queue: queue.Queue = queue.Queue(maxsize=max_queued)
        self._stop = threading.Event()  # abort: skip what is queued
        self._waited = 0.0  # seconds the encoder thread waited for frames (videostyle.timing)
        self.error: BaseException | None = None  # why the encoder stopped early, if it did
        self._thread = threading.Thread(target=self._run, name="videostyle-encoder", daemon=True)
        self._thread.start()

    def add(self, index: int, pts: int, rgb: np.ndarray) -> None:
        """Queue journaled frame ``index`` ``(H, W, 3)`` uint8 at the working size; dropped when the
        encoder has failed (the frame is in the journal, and the caller encodes from it)."""
        self._put((index, pts, rgb))

    def finish(self) -> bool:
        """Encode what is queued and close the output; False when the encoder failed (see ``error``).
        Interrupted while waiting (Ctrl-C), it aborts: no half-written output is left behind."""
        self._put(_END)
        try:
            self._thread.join()
        except BaseException:
            self.abort()
            raise
        return self.error is None

    def abort(self) -> None:
        """Stop without an output (its temp file is removed); frames stay in the journal."""
        self._stop.set()
        self._put(_ABORT)
        self._thread.join()

    def _put(self, item) -> None:
        while self._thread.is_alive():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue  # the encoder is busy (or has just died: checked again)

    def _frames(self):
        for index in range(self._journaled_before):
            yield self._frame(index, self._work.entries[index].pts, self._work.read_frame(index))
        while True:
            start = time.perf_counter()
            item = self._queue.get()
            self._waited += time.perf_counter() - start
            if item is _END:
                return
            if item is _ABORT:
                raise _Aborted
            yield self._frame(*item)

    def _frame(self, index: int, pts: int, rgb: np.ndarray) -> tuple[np.ndarray, int]:
        if self._stop.is_set():
            raise _Aborted
        if self._before_frame is not None:
            self._before_frame(index)
        return images.resize_rgb(rgb, self._out_size), pts

    def _run(self) -> None:
        info = self._info
        started = time.perf_counter()
        try:
            encode_video(self._frames(), output_path=self._output, time_base=info.time_base, source=info,
                         average_rate=info.average_rate, **self._options)
        except _Aborted:
            pass
        except BaseException as exc:  # reported by finish(); the frames are still in the journal
            self.error = exc
        finally:
            # Busy time: the thread's life less its waits for the optimiser's frames.
            PHASES.add("encode", time.perf_counter() - started - self._waited)
