"""Run an iterator ahead of its consumer in a background thread (decode and flow both do this).

Convention:
    Items arrive in the producer's order through a queue of at most ``depth`` items. An exception
    raised by the producer is re-raised in the consumer where the next item would have come, after the
    items made before it. ``close()`` stops the thread promptly, also when the consumer stopped early.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Generic, Iterator, TypeVar

from videostyle.timing import PHASES

T = TypeVar("T")

_ITEM, _DONE, _ERROR = "item", "done", "error"


class BackgroundIterator(Generic[T]):
    """Iterates ``items`` in a daemon thread named ``name``; iterate this object to consume them.

    Args:
        items: the producer; closed (if it has ``close``) in the thread that iterates it.
        depth: queue size (items made ahead), >= 1.
        join_timeout: seconds ``close()`` waits for the thread (None: until it ends). A producer that
            blocks inside its own ``next`` cannot see the stop request; the timeout bounds that wait.
        phase: the :data:`videostyle.timing.PHASES` entry the producer's ``next`` calls count towards
            (None: not timed).
    """

    # Seconds between checks of the stop flag while the queue is full.
    _POLL_S = 0.05

    def __init__(self, items: Iterator[T], *, depth: int, name: str, join_timeout: float | None = None,
                 phase: str | None = None):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._items = items
        self._phase = phase
        self._join_timeout = join_timeout
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        """Queue ``item`` unless asked to stop; False when stopped."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=self._POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            items = iter(self._items)
            while True:
                start = time.perf_counter()
                try:
                    item = next(items)
                except StopIteration:
                    self._put((_DONE, None))
                    break
                if self._phase is not None:
                    PHASES.add(self._phase, time.perf_counter() - start)
                if not self._put((_ITEM, item)):
                    break
        except BaseException as exc:  # handed to the consumer, re-raised there
            self._put((_ERROR, exc))
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    pass

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        kind, payload = self._queue.get()
        if kind == _ITEM:
            return payload
        self._finished = True
        self._thread.join(self._join_timeout)
        if kind == _ERROR:
            raise payload
        raise StopIteration

    def close(self) -> None:
        """Stop the thread and wait for it (see ``join_timeout``); idempotent."""
        self._finished = True
        self._stop.set()
        # Empty the queue so a producer blocked in put() sees the stop flag at once.
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(self._join_timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
