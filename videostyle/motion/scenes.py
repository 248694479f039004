"""Scene cuts: frames where the previous frame cannot be warped onto this one (consistency breaks).

The video loop starts afresh at a cut (no warm start from the other shot, :func:`is_cut` on the flow it
has anyway), and a ``--ray`` run starts a segment at each cut with no run-in
(:func:`videostyle.run.distributed.plan_segments`), so a cut costs no seam.

Convention:
    Frame indices are source indices (0-based, decode order). Frame ``t`` is a cut when the pair
    ``(t-1, t)`` crosses one; frame 0 never is. Frames are scanned at a small size: long edge
    ``long_edge`` px (never upscaled), even sides.

Measured (``long_edge=128``, DIS ``medium``, the clips in ``/work/shared/data/videos``): the reliable
fraction of :func:`videostyle.motion.flow.reliability_mask` is 0.00-0.28 at the five hard cuts of
``bikes.mp4`` (frames 30, 76, 137, 187, 242) and >= 0.41 everywhere else (0.41: a fast focus pull in
``bikes``; >= 0.93 in ``flower``, ``karma``, ``realshort``, ``ficus_vertical``; a synthetic pan of 24 px
a frame at 128 px still gives 0.76). The fraction alone has a thin margin (0.28 vs 0.41), so a cut also
needs the colour histogram to change: :func:`histogram_distance` is >= 0.49 at those cuts and
<= 0.13 on every other pair (~0.1 for the 24 px pan). (A global brightness step can move the histogram a lot, 0.8 on
the test clip's grey background crossing a bin, while it still warps.) A false cut costs a visible jump of style phase
in the middle of a scene, a missed one only an ordinary cross-faded seam: both tests must agree.
Speed on 2 CPU cores (H.264): 350 frames/s at 640x272, 185 at 854x480, 165 at 960x540, 24 at 1080x1920;
decoding at full size (then resizing) dominates: flows and mask take ~2 ms a pair at 128x72.
"""

from __future__ import annotations

from typing import Iterator

import cv2
import numpy as np

from videostyle import images
from videostyle.motion.flow import FlowEstimator, reliability_mask
from videostyle.media.decode import FramePrefetcher, iter_frames
from videostyle.media.probe import VideoInfo

SCAN_LONG_EDGE = 128  # px: enough for DIS to follow normal motion, small enough to cost ~2 ms a pair
RELIABLE_BELOW = 0.35  # a cut has fewer reliable pixels than this (cuts <= 0.28, motion >= 0.41)
HISTOGRAM_ABOVE = 0.3  # ... and a colour histogram that changed more than this (cuts >= 0.49, motion <= 0.13)
# Hue x saturation x value bins: coarse, so motion moves little mass between bins. (4x4x4 RGB bins missed
# cuts between shots of similar colours: 0.12 at a bikes cut.)
_BINS = [8, 4, 4]


def colour_histogram(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB -> ``(128,)`` float32, the fraction of pixels in each 8x4x4 HSV bin (sums to 1)."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, _BINS, [0, 180, 0, 256, 0, 256]).ravel()
    return hist / max(float(hist.sum()), 1.0)


def histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Total variation distance between two :func:`colour_histogram` results: 0 (same) .. 1 (disjoint)."""
    return 0.5 * float(np.abs(a - b).sum())


def is_cut(reliable: float, histogram_change: float, *, threshold: float = RELIABLE_BELOW,
           histogram_threshold: float = HISTOGRAM_ABOVE) -> bool:
    """Whether frames t-1 -> t cross a hard cut: fewer than ``threshold`` of frame t's pixels warp reliably
    from frame t-1 (fraction 0..1) and the :func:`histogram_distance` exceeds ``histogram_threshold``."""
    return reliable < threshold and histogram_change > histogram_threshold


def frame_changes(info: VideoInfo, *, long_edge: int = SCAN_LONG_EDGE) -> Iterator[tuple[int, float, float]]:
    """``(t, reliable fraction, histogram distance)`` for each pair ``(t-1, t)``, ``t = 1, 2, ...``.

    Reliable fraction: mean of :func:`videostyle.motion.flow.reliability_mask` of DIS flows both ways (0..1, 1 =
    every pixel of frame t is warped from frame t-1 consistently). Decodes the video once.
    """
    size = images.working_size(info.width, info.height, min(long_edge, max(info.width, info.height)))
    flow = FlowEstimator("dis")
    prev = prev_hist = None
    with FramePrefetcher(iter_frames(info), depth=4) as frames:  # decode overlaps the flows
        for frame in frames:
            small = images.resize_rgb(frame.rgb, size)
            hist = colour_histogram(small)
            if prev is not None:
                reliable = reliability_mask(flow(small, prev), flow(prev, small)).mean()
                yield frame.index, float(reliable), histogram_distance(prev_hist, hist)
            prev, prev_hist = small, hist


def detect_scene_cuts(info: VideoInfo, *, long_edge: int = SCAN_LONG_EDGE, threshold: float = RELIABLE_BELOW,
                      histogram_threshold: float = HISTOGRAM_ABOVE) -> list[int]:
    """Frames ``t`` (ascending, >= 1) where a hard cut starts a new shot.

    ``t`` is a cut when fewer than ``threshold`` of frame t's pixels are reliably warped from frame
    t-1 (fraction 0..1) and the colour histogram distance exceeds ``histogram_threshold`` (0..1); see the
    module docstring for the measurements behind the defaults. Dissolves and fades are not cuts: their
    frames warp well.
    """
    return [t for t, reliable, changed in frame_changes(info, long_edge=long_edge)
            if is_cut(reliable, changed, threshold=threshold, histogram_threshold=histogram_threshold)]
