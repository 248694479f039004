"""Busy time of each pipeline phase, summed over the threads that run it.

The video loop runs decode, flow, PNG writing and encoding in threads beside the optimiser. Whether
they keep the optimiser fed shows in their busy time: a phase busy for less than the run's wall time
keeps up; the optimiser's share of the wall time is how close the run is to optimiser-bound.

Phases (seconds of work, never of waiting on a queue):
    ``decode``    demux, decode and conversion to RGB (the decode thread);
    ``flow``      the optical flows and their reliability masks (the flow thread);
    ``optimise``  one frame's stylisation, including its read-back as 8-bit (the main thread);
    ``write``     PNG writing and journaling (the writer thread);
    ``encode``    resizing to the output size and H.264/audio muxing (the encoder thread).

One process-wide table (:data:`PHASES`): the threads are created far apart, and a timer costs two
``perf_counter`` calls per frame and phase. :func:`videostyle.run.api.stylize_video` resets it at the
start of a run and logs it at the end (``-v``); ``scripts/gpu_check.py`` reads it.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

PHASE_NAMES = ("decode", "flow", "optimise", "write", "encode")


class PhaseTimes:
    """Thread-safe totals ``{phase: (busy seconds, count)}``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    def add(self, phase: str, seconds: float, count: int = 1) -> None:
        with self._lock:
            self._seconds[phase] += seconds
            self._counts[phase] += count

    @contextmanager
    def measure(self, phase: str) -> Iterator[None]:
        """Adds the wall time of the ``with`` body (in the calling thread) to ``phase``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - start)

    def reset(self) -> None:
        with self._lock:
            self._seconds.clear()
            self._counts.clear()

    def snapshot(self) -> dict[str, tuple[float, int]]:
        """``{phase: (busy seconds, count)}`` for the phases seen since the last reset."""
        with self._lock:
            return {phase: (self._seconds[phase], self._counts[phase]) for phase in self._seconds}

    def summary(self, wall_seconds: float) -> str:
        """One line: each phase's busy seconds and share of ``wall_seconds``."""
        snap = self.snapshot()
        parts = [f"{name} {snap[name][0]:.1f} s ({snap[name][0] / wall_seconds:.0%})"
                 for name in PHASE_NAMES if name in snap and wall_seconds > 0]
        return ", ".join(parts) if parts else "no phase timed"


PHASES = PhaseTimes()
