"""Temporal warping error on tiny synthetic clips (flows estimated on the source with DIS)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from videostyle.errors import InputError
from videostyle.model.metrics import temporal_warping_error

W, H = 96, 72


def texture(shift: tuple[float, float] = (0.0, 0.0), seed: int = 0) -> np.ndarray:
    """``(H, W, 3)`` uint8: analytic random texture translated by ``shift`` px (exact sub-pixel shifts)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    xs, ys = xs - shift[0], ys - shift[1]
    out = np.zeros((H, W, 3))
    for c in range(3):
        for _ in range(12):
            wavelength, theta, phase = rng.uniform(5, 30), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
            out[..., c] += np.sin((np.cos(theta) * xs + np.sin(theta) * ys) * 2 * np.pi / wavelength + phase)
    return np.clip((np.tanh(out / 3) * 0.5 + 0.5) * 255, 0, 255).astype(np.uint8)


def stylise(rgb: np.ndarray) -> np.ndarray:
    """A stand-in for a temporally stable stylisation: a fixed per-pixel colour transform."""
    return np.ascontiguousarray(255 - rgb[..., ::-1])


def panning_clip(n: int = 6, step: float = 2.0) -> list[np.ndarray]:
    return [texture(shift=(step * i, 0.5 * step * i)) for i in range(n)]


def test_static_clip_has_near_zero_error():
    source = [texture()] * 4
    errors = temporal_warping_error([stylise(f) for f in source], source)
    assert errors.shape == (3,) and errors.dtype == np.float64
    assert errors.max() < 1e-5


def test_shuffled_frames_have_much_larger_error_than_ordered_ones():
    source = panning_clip()
    stylised = [stylise(f) for f in source]
    ordered = temporal_warping_error(stylised, source)
    shuffled = temporal_warping_error([stylised[i] for i in (0, 4, 1, 5, 2, 3)], source)
    assert ordered.mean() < 2e-3
    assert shuffled.mean() > 20 * ordered.mean()


def test_flicker_raises_the_error():
    source = panning_clip()
    steady = [stylise(f) for f in source]
    flicker = [np.clip(f.astype(np.int16) + (25 if i % 2 else -25), 0, 255).astype(np.uint8)
               for i, f in enumerate(steady)]
    assert temporal_warping_error(flicker, source).mean() > 10 * temporal_warping_error(steady, source).mean()


def test_stylised_frames_smaller_than_the_source_use_rescaled_flows():
    source = panning_clip()
    half = [cv2.resize(stylise(f), (W // 2, H // 2), interpolation=cv2.INTER_AREA) for f in source]
    errors = temporal_warping_error(half, source)
    assert errors.shape == (5,)
    shuffled = temporal_warping_error([half[i] for i in (0, 4, 1, 5, 2, 3)], source)
    assert errors.mean() < 3e-3 and shuffled.mean() > 10 * errors.mean()


def test_custom_estimator_is_used():
    calls = []

    def zero_flow(a, b):
        calls.append(a.shape)
        return np.zeros((*a.shape[:2], 2), np.float32)

    source = [texture()] * 3
    assert temporal_warping_error(source, source, estimator=zero_flow).tolist() == [0.0, 0.0]
    assert len(calls) == 4  # backward and forward per pair


def test_no_reliable_pixel_gives_nan():
    def inconsistent(a, b):
        return np.full((*a.shape[:2], 2), 5.0, np.float32)  # fwd == back: never consistent

    source = [texture()] * 2
    assert np.isnan(temporal_warping_error(source, source, estimator=inconsistent)).all()


def test_short_clips_give_no_errors():
    assert temporal_warping_error([texture()], [texture()]).shape == (0,)


def test_input_checks():
    with pytest.raises(InputError, match="got 2 stylised and 3 source"):
        temporal_warping_error([texture()] * 2, [texture()] * 3)
    with pytest.raises(InputError, match=r"stylised frame 1 must be \(H, W, 3\) uint8 RGB; got float64"):
        temporal_warping_error([texture(), np.zeros((H, W, 3))], [texture()] * 2)
    with pytest.raises(InputError, match="source frames must all be 96x72; frame 1 is 48x72"):
        temporal_warping_error([texture()] * 2, [texture(), texture()[:, :48]])


def test_warping_error_with_the_exact_flow_of_a_shift_is_small_and_nan_without_reliable_pixels():
    from videostyle.model.metrics import warping_error

    prev, cur = texture(), texture(shift=(1.5, 0.5))
    flow = np.zeros((H, W, 2), np.float32)
    flow[..., 0], flow[..., 1] = -1.5, -0.5  # frame t -> t-1
    inside = np.ones((H, W), np.float32)
    inside[:1], inside[:, :2] = 0, 0  # where p + flow(p) falls outside frame t-1
    exact = warping_error(cur, prev, flow, inside)
    assert exact < 0.1 * warping_error(cur, prev, np.zeros_like(flow), inside)
    assert np.isnan(warping_error(cur, prev, flow, np.zeros((H, W), np.float32)))
