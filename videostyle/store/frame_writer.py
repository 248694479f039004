"""Journal finished frames on a thread, in order, while the optimiser works on the next frame.

Writing a frame costs PNG compression plus two fsyncs (frame and journal line): ~10 ms at 256 px and
~50 ms at 720p on the development CPU. Against a GPU's ~0.5 s per frame that is a tenth, so it runs
beside the optimiser instead of after it. The guarantees of :mod:`videostyle.store.workdir` are unchanged: a
frame counts as finished only once :meth:`WorkDir.write_frame` has returned for it.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable

import numpy as np

from videostyle.store.workdir import WorkDir
from videostyle.timing import PHASES

Frame = tuple[int, int, np.ndarray]  # (index, pts, (H, W, 3) uint8 RGB)


class FrameWriter:
    """``submit`` batches of frames; a thread writes and journals them in submission order.

    ``after_write(index, pts, rgb)`` runs on the thread once frame ``index`` is journaled (the streaming
    encoder, the test kill hook).
    An error on the thread (disk full) is raised by every later :meth:`submit` and :meth:`flush`; no
    frame after the failing one is written (the journal must stay a prefix). Use as a context manager: leaving it waits for every
    submitted frame (also on Ctrl-C, so finished frames are kept).
    """

    def __init__(self, work: WorkDir, *, max_batches: int = 4,
                 after_write: Callable[[int, int, np.ndarray], None] | None = None):
        self._work = work
        self._after_write = after_write
        # Bounded: a stalled disk eventually blocks the optimiser instead of filling memory with frames.
        self._queue: queue.Queue[list[Frame] | None] = queue.Queue(maxsize=max_batches)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="videostyle-frame-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            try:
                if batch is None:
                    return
                if self._error is None:
                    for index, pts, rgb in batch:
                        with PHASES.measure("write"):
                            self._work.write_frame(index, pts, rgb)
                        if self._after_write is not None:
                            self._after_write(index, pts, rgb)
            except BaseException as exc:  # forwarded to the optimiser's thread
                self._error = exc
            finally:
                self._queue.task_done()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, batch: list[Frame]) -> None:
        """Queue ``batch`` (written in order after earlier batches); blocks while the queue is full."""
        self._raise_error()
        if batch:
            self._queue.put(list(batch))

    def flush(self) -> None:
        """Wait until every submitted frame is journaled; raise the thread's error if there was one."""
        self._queue.join()
        self._raise_error()

    def close(self) -> None:
        """Flush, then stop the thread."""
        try:
            self.flush()
        finally:
            self._queue.put(None)
            self._thread.join()

    def __enter__(self) -> "FrameWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        # Leaving on an error: still keep what was finished, but let the original error propagate.
        try:
            self.close()
        except Exception:
            pass
