"""Evaluation metrics for stylised videos.

Convention:
    Frames are ``(H, W, 3)`` uint8 RGB; errors are computed on pixels scaled to [0, 1].
    Flows follow :mod:`videostyle.motion.flow`: backward flow t -> t-1, ``(H, W, 2)`` px, channel 0 = x.
"""

from __future__ import annotations

from typing import Callable, Sequence

import cv2
import numpy as np

from videostyle.errors import InputError
from videostyle.motion.flow import FlowEstimator, reliability_mask, warp_numpy


def temporal_warping_error(stylised: Sequence[np.ndarray], source: Sequence[np.ndarray], *,
                           estimator: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
                           ) -> np.ndarray:
    """Per-frame temporal warping error of a stylised clip, with flows measured on its source.

    ``E_t = sum_p M_t(p) |O_t(p) - O_{t-1}(p + w_t(p))|² / (3 sum_p M_t(p))`` for t = 1..T-1, where
    ``O`` are the stylised frames in [0, 1], ``w_t`` the backward flow source_t -> source_{t-1} and
    ``M_t`` its :func:`~videostyle.motion.flow.reliability_mask` (forward-backward checked). The clip-level
    error is the mean of the returned values (``np.nanmean``). Lower = more temporally consistent;
    a static clip stylised identically every frame gives 0.

    Args:
        stylised: T frames ``(h, w, 3)`` uint8.
        source: T frames ``(H, W, 3)`` uint8. If ``(H, W) != (h, w)``, flows are estimated at the
            source size, then resized to ``(h, w)`` with their vectors rescaled; masks are resized
            conservatively (a stylised pixel is reliable only if all source pixels under it are).
        estimator: ``(a, b) -> flow a->b``; default ``FlowEstimator("dis")``.
    Returns:
        ``(T-1,)`` float64, each >= 0 (in [0, 1]); NaN for a frame with no reliable pixel.
    Raises:
        InputError: different frame counts, or frames that are not ``(H, W, 3)`` uint8 of one size.
    """
    return temporal_warping_errors([stylised], source, estimator=estimator)[0]


def temporal_warping_errors(clips: Sequence[Sequence[np.ndarray]], source: Sequence[np.ndarray], *,
                            estimator: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
                            ) -> list[np.ndarray]:
    """:func:`temporal_warping_error` of each of ``clips`` (T frames each, sizes may differ between clips)
    against one ``source``, estimating each flow once for them all. Returns one ``(T-1,)`` array per clip."""
    for stylised in clips:
        if len(stylised) != len(source):
            raise InputError(f"expected as many stylised frames as source frames; "
                             f"got {len(stylised)} stylised and {len(source)} source")
        _check_frames("stylised", stylised)
    _check_frames("source", source)
    est = estimator if estimator is not None else FlowEstimator("dis")
    errors = [np.empty(max(len(source) - 1, 0), dtype=np.float64) for _ in clips]
    for t in range(1, len(source)):
        back = est(source[t], source[t - 1])
        mask = reliability_mask(back, est(source[t - 1], source[t]))
        for stylised, out in zip(clips, errors):
            out_h, out_w = stylised[t].shape[:2]
            flow, valid = back, mask
            if back.shape[:2] != (out_h, out_w):
                flow, valid = _resize_flow(back, (out_w, out_h)), _resize_mask(mask, (out_w, out_h))
            out[t - 1] = warping_error(stylised[t], stylised[t - 1], flow, valid)
    return errors


def warping_error(current: np.ndarray, previous: np.ndarray, flow_back: np.ndarray, mask: np.ndarray) -> float:
    """One frame's term of :func:`temporal_warping_error`, for flows and masks from elsewhere.

    ``sum_p M(p) |O_t(p) - O_{t-1}(p + w(p))|² / (3 sum_p M(p))`` with pixels scaled to [0, 1]; used
    with the exact flow of a synthetic clip (scripts/bench_temporal.py) as well as with DIS.

    Args:
        current, previous: ``(H, W, 3)`` uint8 frames t and t-1.
        flow_back: ``(H, W, 2)`` px, channel 0 = x, flow t -> t-1 on frame t's grid.
        mask: ``(H, W)`` in [0, 1], 1 where the warp is reliable.
    Returns:
        The error in [0, 1]; NaN when no pixel is reliable.
    """
    cur = current.astype(np.float32) / 255.0
    prev_warped = warp_numpy(previous.astype(np.float32) / 255.0, flow_back)
    total = float(mask.sum())
    sq = np.sum((cur - prev_warped) ** 2, axis=2)
    return float(np.sum(mask * sq)) / (3.0 * total) if total > 0 else float("nan")


def _check_frames(name: str, frames: Sequence[np.ndarray]) -> None:
    shape = None
    for i, f in enumerate(frames):
        if not isinstance(f, np.ndarray) or f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3:
            got = f"{f.dtype} {f.shape}" if isinstance(f, np.ndarray) else type(f).__name__
            raise InputError(f"{name} frame {i} must be (H, W, 3) uint8 RGB; got {got}")
        if shape is None:
            shape = f.shape
        elif f.shape != shape:
            raise InputError(f"{name} frames must all be {shape[1]}x{shape[0]}; "
                             f"frame {i} is {f.shape[1]}x{f.shape[0]}")


def _resize_flow(flow: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(H, W, 2)`` px -> ``(h, w, 2)`` px at ``size = (w, h)``: resample, then rescale the vectors."""
    h, w = flow.shape[:2]
    out = cv2.resize(flow, size, interpolation=cv2.INTER_LINEAR)
    # cv2.resize (as used for frames) maps x_dst = (x_src + 0.5) * w_dst / w_src - 0.5, so displacements
    # scale by w_dst / w_src.
    out[..., 0] *= size[0] / w
    out[..., 1] *= size[1] / h
    return out


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` {0,1} -> ``(h, w)`` {0,1}; 1 only where every contributing source pixel is 1."""
    shrinking = size[0] < mask.shape[1]
    soft = cv2.resize(mask.astype(np.float32), size,
                      interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return (soft > 1.0 - 1e-4).astype(np.float32)


def quality_distances(encoder, image, content, style_grams: dict, *, content_layer: str = "relu4_2"
                      ) -> tuple[float, float]:
    """``(style distance, content distance)`` of a stylised ``image`` (bench_quality, the trained tests).

    Style distance: for each layer of ``style_grams``, the MSE of ``image``'s Gram matrix from the style's,
    divided by the same MSE of the ``content`` photo's own Gram matrix; then the mean of these per-layer
    ratios. 1 = no closer to the style than the photo itself, 0 = the style's Gram matrices exactly.
    (A Gram distance summed over layers would mostly measure relu1_1/relu2_1, the layers that depend on
    how the style image was resized; the per-layer ratio weighs every layer alike.)
    Content distance: ``mean((F - F_c)^2) / mean(F_c^2)`` at ``content_layer``: 0 = the photo's features,
    ~1 = none of them left.

    Args:
        encoder: a :class:`~videostyle.model.features.VGGEncoder` computing ``content_layer`` and the style layers.
        image, content: ``(1, 3, H, W)`` float32 RGB in [0, 1], same size.
        style_grams: ``{layer: (1, C, C)}`` as :func:`videostyle.model.optimise.compute_style_targets` gives.
    """
    import torch

    from videostyle.model.losses import gram

    with torch.no_grad():
        fi, fc = encoder(image), encoder(content)
        ratios = []
        for layer, target in style_grams.items():
            own = (gram(fc[layer]) - target).pow(2).mean()
            ratios.append(float((gram(fi[layer]) - target).pow(2).mean() / own.clamp_min(1e-30)))
        c = fc[content_layer]
        content_distance = float((fi[content_layer] - c).pow(2).mean() / c.pow(2).mean().clamp_min(1e-30))
    return sum(ratios) / len(ratios), content_distance
