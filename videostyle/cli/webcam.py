"""`videostyle webcam`'s live preview: the newest captured frame stylised by THE step
(:meth:`videostyle.step.Stylizer.step`) on a worker thread, at a low resolution, while
:func:`videostyle.media.capture.record` records. The capture layer knows nothing of stylising: it only
offers frames to this preview.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np


def display_available() -> bool:
    """True when a window can be shown: a display is set and OpenCV has a GUI backend."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) and os.name == "posix":
        return False
    try:
        import cv2

        info = cv2.getBuildInformation()
    except Exception:
        return False
    gui = [line for line in info.splitlines() if line.strip().startswith("GUI:")]
    return bool(gui) and "NONE" not in gui[0].upper()


@dataclass(frozen=True)
class PreviewStats:
    """What the preview achieved, measured (never estimated).

    Attributes:
        frames: frames stylised.
        offered_from: frames the camera delivered while the preview ran.
        seconds: wall time from the start of the first stylised frame to the end of the last.
        fps: ``frames / seconds`` (``1 / seconds`` of a lone frame), 0 when none was done.
        setup_s: model and style-target setup before the first frame (not counted in ``fps``).
        size: ``(width, height)`` px stylised.
        iterations: optimiser iterations per frame.
        output: the preview MP4, ``None`` when not written (no frame, or not asked for).
        shown: whether frames were shown in a window.
        error: why the preview stopped early, else ``None``.
    """

    frames: int
    offered_from: int
    seconds: float
    fps: float
    setup_s: float
    size: tuple[int, int]
    iterations: int
    output: Path | None
    shown: bool
    error: str | None = None

    def describe(self) -> str:
        if self.error:
            return f"preview stopped: {self.error}"
        if not self.frames:
            return "preview: no frame was stylised before the recording ended"
        share = f"; the camera delivered {self.offered_from}, so 1 in {self.offered_from / self.frames:.1f} " \
                f"was previewed" if self.offered_from > self.frames else ""
        where = f" -> {self.output}" if self.output else ""
        return (f"preview: {self.frames} frame{'s' if self.frames != 1 else ''} stylised in {self.seconds:.1f} s = {self.fps:.2f} fps at "
                f"{self.size[0]}x{self.size[1]} px, {self.iterations} iteration{'s' if self.iterations != 1 else ''} "
                f"each, warm start "
                f"(setup {self.setup_s:.1f} s not counted{share}){where}")


class LivePreview:
    """Stylises the newest captured frame at a low resolution on a worker thread, as fast as it can.

    Capture never waits for it: :meth:`wants_frame` is True only while the worker is idle, so frames
    that arrive while one is being stylised are simply not previewed. Each frame starts from the
    previous stylised frame warped by DIS optical flow (pixels the forward-backward check rejects
    from the content), then runs ``iterations`` optimiser steps without the temporal loss.
    The preview is a quick look, not the result: the offline pass stylises every frame at full size.

    Args:
        cfg: the run's :class:`~videostyle.config.StyleConfig` (styles, weights, layers); its size,
            iterations and init are replaced by the preview's.
        device: torch device name (``auto``, ``cpu``, ``cuda``).
        long_edge: preview size, px of the long edge.
        iterations: optimiser iterations per frame.
        output: preview MP4 to write (H.264 at the preview size, capture timestamps), or ``None``.
        show: show frames in an OpenCV window (only where :func:`display_available`).
    """

    def __init__(self, cfg, *, device: str = "auto", long_edge: int = 160, iterations: int = 4,
                 output: str | os.PathLike | None = None, show: bool = False):
        self.cfg = cfg
        self.device = device
        self.long_edge = long_edge
        self.iterations = iterations
        self.output = Path(output) if output else None
        self.show = show
        self._size: tuple[int, int] | None = None
        self._cond = threading.Condition()
        self._slot: tuple[np.ndarray, float] | None = None
        self._idle = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._offered = 0
        self._done = 0
        self._t_first: float | None = None
        self._t_last: float | None = None
        self._setup_s = 0.0
        self._error: str | None = None
        self._written: Path | None = None
        self._shown = False

    def frame_size(self, width: int, height: int) -> tuple[int, int]:
        """Preview ``(width, height)`` for a capture of ``width x height``; starts the worker."""
        if self._size is None:
            from videostyle.images import working_size

            self._size = working_size(width, height, min(self.long_edge, max(width, height)))
            self._thread = threading.Thread(target=self._run, name="videostyle-preview", daemon=True)
            self._thread.start()
        return self._size

    def wants_frame(self) -> bool:
        """True when the worker is idle (or not started yet) and would take a frame now."""
        if self._size is None:
            return True
        with self._cond:
            return self._idle and self._slot is None and not self._closed

    def offer(self, rgb: np.ndarray, time_s: float) -> None:
        """Hand over ``(H, W, 3)`` uint8 RGB at :meth:`frame_size`, captured at ``time_s``."""
        with self._cond:
            if self._closed:
                return
            self._slot = (rgb, time_s)
            self._offered += 1
            self._cond.notify()

    def live_fps(self) -> float | None:
        """Frames stylised per second so far (None before the first one finished)."""
        if not self._done or self._t_first is None:
            return None
        elapsed = time.monotonic() - self._t_first
        return self._done / elapsed if elapsed > 0 else None

    def close(self, *, captured: int | None = None) -> PreviewStats:
        """Finish the frame in progress, write the preview file, and return what was achieved."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
        seconds = (self._t_last - self._t_first) if self._done and self._t_first is not None else 0.0
        fps = self._done / seconds if seconds > 0 else 0.0
        return PreviewStats(frames=self._done, offered_from=max(captured or 0, self._offered), seconds=seconds,
                            fps=fps, setup_s=self._setup_s, size=self._size or (0, 0),
                            iterations=self.iterations, output=self._written, shown=self._shown,
                            error=self._error)

    def _take(self) -> tuple[np.ndarray, float] | None:
        with self._cond:
            self._idle = True
            while self._slot is None and not self._closed:
                self._cond.wait()
            self._idle = False
            if self._slot is None:
                return None
            item, self._slot = self._slot, None
            return item

    def _run(self) -> None:
        try:
            t0 = time.monotonic()
            stylised = self._stylised_frames()
            self._setup_s = time.monotonic() - t0
            if self.output is not None:
                from videostyle.media.encode import encode_video

                try:
                    encode_video(stylised, output_path=self.output, time_base=Fraction(1, 1000), crf=23,
                                 preset="veryfast")
                    self._written = self.output
                except ValueError:
                    if self._done:  # "no frames" is the only expected one: anything else is real
                        raise
            else:
                for _ in stylised:
                    pass
        except Exception as exc:  # the preview must never end the recording
            self._error = f"{type(exc).__name__}: {exc}"
            with self._cond:
                self._closed = True
                self._slot = None

    def _stylised_frames(self):
        """Build the model (counted as setup), then yield ``(rgb, pts_ms)`` per stylised frame."""
        from dataclasses import replace

        from videostyle.motion.flow import FlowEstimator
        from videostyle.motion.temporal import initial_image, mask_tensor, warm_start_mask, warp_previous
        from videostyle.step import Stylizer, pick_device

        cfg = replace(self.cfg, size=max(self._size), iters_first=self.iterations, iters=self.iterations,
                      init="prev-warped-inside", temporal_weight=0.0, passes=1, octaves=1)  # live: speed first
        device = pick_device(self.device)
        stylizer = Stylizer(cfg, device=device, working_size=self._size)
        flow = FlowEstimator("dis", dis_preset="ultrafast")
        window = self._open_window() if self.show else None
        last: dict = {}  # the frame before: its source ("source") and its stylised result ("out")

        def stylise(rgb: np.ndarray) -> np.ndarray:
            def start(target):
                if not last:
                    return target.clone(), ()
                back = flow(rgb, last["source"])  # one flow: the warm start needs no reliability check
                return initial_image("prev-warped-inside", content=target, previous=last["out"],
                                     warped_previous=warp_previous(last["out"], back),
                                     mask=mask_tensor(warm_start_mask("prev-warped-inside", back), device)), ()

            step = stylizer.step(rgb, self._done, start, iterations=self.iterations, evaluate_result=True)
            last.update(source=rgb, out=step.previous)
            return step.rgb
        return self._loop(stylise, window)

    def _loop(self, stylise: Callable[[np.ndarray], np.ndarray], window):
        """Take the newest offered frame, stylise it (THE step, :meth:`videostyle.step.Stylizer.step`), show
        it and yield it with its capture time; until :meth:`close`."""
        last_pts = -1
        while True:
            item = self._take()
            if item is None:
                return
            rgb, time_s = item
            start = time.monotonic()
            if self._t_first is None:
                self._t_first = start
            out = stylise(rgb)
            self._done += 1
            self._t_last = time.monotonic()
            if window is not None:
                self._show(window, out)
            pts = max(last_pts + 1, round(time_s * 1000))
            last_pts = pts
            yield out, pts

    def _open_window(self):
        try:
            import cv2

            cv2.namedWindow("videostyle preview", cv2.WINDOW_NORMAL)
            self._shown = True
            return cv2
        except Exception:
            return None  # no GUI after all: the preview file and the fps line remain

    def _show(self, cv2, rgb: np.ndarray) -> None:
        try:
            cv2.imshow("videostyle preview", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            cv2.waitKey(1)
        except Exception:
            pass
