"""Flow backends, warping, the reliability mask and the flow worker (tiny synthetic inputs, CPU)."""

from __future__ import annotations

import threading
import urllib.error
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from videostyle.motion import flow as flowmod
from videostyle.errors import InputError, WeightsError
from videostyle.motion.flow import (FLOW_METHODS, FlowEstimator, FlowWorker, iter_frame_flows, reliability_mask,
                             warp, warp_numpy)

W, H = 96, 72
BORDER = 8  # px ignored at the edges, where content enters or leaves the frame


def texture(width: int = W, height: int = H, shift: tuple[float, float] = (0.0, 0.0), seed: int = 0) -> np.ndarray:
    """``(height, width, 3)`` uint8 RGB: random oriented sinusoids through tanh, translated by ``shift`` px.

    Evaluated analytically, so ``texture(shift=d)(p) == texture()(p - d)`` exactly for sub-pixel ``d``
    too: the flow from ``texture()`` to ``texture(shift=d)`` is ``d`` everywhere.
    """
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    xs, ys = xs - shift[0], ys - shift[1]
    out = np.zeros((height, width, 3))
    for c in range(3):
        for _ in range(12):
            wavelength, theta, phase = rng.uniform(5, 30), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
            out[..., c] += np.sin((np.cos(theta) * xs + np.sin(theta) * ys) * 2 * np.pi / wavelength + phase)
    return np.clip((np.tanh(out / 3) * 0.5 + 0.5) * 255, 0, 255).astype(np.uint8)


def interior(a: np.ndarray, border: int = BORDER) -> np.ndarray:
    return a[border:-border, border:-border]


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0


# ---------------------------------------------------------------------------------------------- warp


def test_zero_flow_warps_torch_image_to_itself():
    img = to_tensor(texture())
    out = warp(img, np.zeros((H, W, 2), np.float32))
    assert out.shape == img.shape and out.dtype == img.dtype
    assert torch.allclose(out, img, atol=1e-5)


def test_zero_flow_warps_numpy_image_to_itself():
    img = texture()
    out = warp_numpy(img, np.zeros((H, W, 2), np.float32))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, img)


def test_warp_samples_at_p_plus_flow():
    img = texture()
    shifted = np.zeros((H, W, 2), np.float32)
    shifted[..., 0], shifted[..., 1] = 3, -2  # out(y, x) = img(y - 2, x + 3)
    expected = img[BORDER - 2:H - BORDER - 2, BORDER + 3:W - BORDER + 3]
    np.testing.assert_array_equal(interior(warp_numpy(img, shifted)), expected)
    out = warp(to_tensor(img), torch.from_numpy(shifted))
    np.testing.assert_allclose(interior(out[0].permute(1, 2, 0).numpy()), expected / 255.0, atol=1e-5)


def test_warp_torch_matches_numpy_for_subpixel_flow():
    img = texture().astype(np.float32) / 255.0
    rng = np.random.default_rng(1)
    flow = rng.uniform(-2.5, 2.5, size=(H, W, 2)).astype(np.float32)
    by_torch = warp(torch.from_numpy(img).permute(2, 0, 1)[None], flow)[0].permute(1, 2, 0).numpy()
    # cv2.remap quantises sample positions to 1/32 px, hence the tolerance.
    np.testing.assert_allclose(warp_numpy(img, flow), by_torch, atol=0.02)


def test_warp_out_of_image_samples_replicate_the_border():
    img = np.arange(H * W, dtype=np.float32).reshape(H, W, 1)
    flow = np.zeros((H, W, 2), np.float32)
    flow[..., 0] = -1000.0
    np.testing.assert_array_equal(warp_numpy(img, flow)[..., 0], np.repeat(img[:, :1, 0], W, axis=1))
    out = warp(torch.from_numpy(img).permute(2, 0, 1)[None], flow)
    np.testing.assert_allclose(out[0, 0].numpy(), np.repeat(img[:, :1, 0], W, axis=1), rtol=1e-5)


def test_warp_accepts_batched_flow_and_keeps_gradient():
    img = to_tensor(texture()).repeat(2, 1, 1, 1).requires_grad_(True)
    flows = torch.zeros(2, H, W, 2)
    flows[1, ..., 0] = 1.0
    out = warp(img, flows)
    assert out.shape == (2, 3, H, W)
    assert torch.allclose(out[0], img[0], atol=1e-5)
    assert torch.allclose(out[1, :, :, :-1], img[1, :, :, 1:], atol=1e-5)
    out.sum().backward()
    assert img.grad is not None and torch.isfinite(img.grad).all()


def test_warp_rejects_flow_of_another_size():
    with pytest.raises(ValueError, match=r"\(72, 96, 2\).*got \(10, 10, 2\)"):
        warp(torch.zeros(1, 3, H, W), np.zeros((10, 10, 2), np.float32))
    with pytest.raises(ValueError, match=r"\(72, 96, 2\).*got \(10, 10, 2\)"):
        warp_numpy(np.zeros((H, W, 3), np.uint8), np.zeros((10, 10, 2), np.float32))


def test_warp_numpy_keeps_unusual_dtypes():
    img = (np.arange(H * W).reshape(H, W) % 7 == 0)
    out = warp_numpy(img, np.zeros((H, W, 2), np.float32))
    assert out.dtype == np.bool_ and np.array_equal(out, img)
    big = np.arange(H * W, dtype=np.int64).reshape(H, W, 1) * 100_000
    assert np.array_equal(warp_numpy(big, np.zeros((H, W, 2), np.float32)), big)


# ---------------------------------------------------------------------------------------------- estimators


@pytest.mark.parametrize("method", ["dis", "farneback"])
@pytest.mark.parametrize("shift", [(3.0, -2.0), (1.5, 0.75), (-0.4, 0.6)])
def test_known_shift_is_recovered_within_a_pixel(method, shift):
    est = FlowEstimator(method)
    a, b = texture(), texture(shift=shift)  # b(p) = a(p - shift), so flow a -> b = shift
    flow = est(a, b)
    assert flow.shape == (H, W, 2) and flow.dtype == np.float32
    err = interior(np.linalg.norm(flow - np.asarray(shift, np.float32), axis=2))
    assert err.max() < 1.0
    assert np.median(err) < 0.25


def test_sign_convention_warp_previous_by_backward_flow_gives_current():
    prev, cur = texture(), texture(shift=(2.5, 1.0))  # content moves right and down
    back = FlowEstimator("dis")(cur, prev)  # flow t -> t-1
    np.testing.assert_allclose(interior(back), np.broadcast_to([-2.5, -1.0], interior(back).shape), atol=0.5)
    warped = warp(to_tensor(prev), back)[0].permute(1, 2, 0).numpy()
    aligned = np.abs(interior(warped) - interior(cur / 255.0)).mean()
    unaligned = np.abs(interior(prev / 255.0) - interior(cur / 255.0)).mean()
    assert aligned < 0.02 < unaligned
    assert aligned < unaligned / 10


def test_identical_frames_give_near_zero_flow():
    img = texture()
    assert np.abs(FlowEstimator("dis")(img, img)).max() < 0.1


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="dis, farneback, raft-small, raft-large.*'pwc'"):
        FlowEstimator("pwc")
    assert FLOW_METHODS == ("dis", "farneback", "raft-small", "raft-large")


def test_estimator_input_checks():
    est = FlowEstimator("dis")
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8.*float64"):
        est(np.zeros((H, W, 3)), texture())
    with pytest.raises(InputError, match="96x72 and 48x36"):
        est(texture(), texture(48, 36))


@pytest.mark.parametrize("method", ["raft-small", "raft-large"])
def test_untrained_raft_gives_a_flow_of_the_input_size(method):
    # Shapes and the pad/crop path only: untrained weights say nothing about accuracy.
    est = FlowEstimator(method, weights="untrained", raft_updates=2)
    assert est.weights_id == "untrained-seed0"
    a, b = texture(60, 44), texture(60, 44, shift=(1, 0))  # not multiples of 8, below RAFT's 128 px
    flow = est(a, b)
    assert flow.shape == (44, 60, 2) and flow.dtype == np.float32 and np.isfinite(flow).all()


def test_untrained_raft_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    one = FlowEstimator("raft-small", weights="untrained")
    assert torch.equal(torch.rand(3), expected)
    two = FlowEstimator("raft-small", weights="untrained")
    for p, q in zip(one.model.parameters(), two.model.parameters()):
        assert torch.equal(p, q)


def test_raft_auto_without_cached_weights_or_network_says_where_to_put_them(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError) as info:
        FlowEstimator("raft-small", weights="auto")
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "checkpoints" / "raft_small_C_T_V2-01064c6d.pth") in message
    assert "Name or service not known" in message


def test_raft_weights_from_a_state_dict_path(tmp_path):
    path = tmp_path / "raft.pth"
    torch.save(FlowEstimator("raft-small", weights="untrained").model.state_dict(), path)
    est = FlowEstimator("raft-small", weights=str(path))
    assert est.weights_id == str(path)
    with pytest.raises(WeightsError, match="expected a raft-large state dict"):
        FlowEstimator("raft-large", weights=str(path))
    with pytest.raises(WeightsError, match="no such file"):
        FlowEstimator("raft-small", weights=str(tmp_path / "missing.pth"))


# ---------------------------------------------------------------------------------------------- mask


def constant_flow(dx: float, dy: float, width: int = W, height: int = H) -> np.ndarray:
    flow = np.empty((height, width, 2), np.float32)
    flow[..., 0], flow[..., 1] = dx, dy
    return flow


def test_pure_shift_exact_flows_mask_only_the_disoccluded_border():
    # Content moves 3 px right: columns 0..2 of frame t were not visible in frame t-1.
    mask = reliability_mask(constant_flow(-3, 0), constant_flow(3, 0))
    assert mask.shape == (H, W) and mask.dtype == np.float32
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert not mask[:, :3].any()
    assert mask[:, 3:].all()


def test_pure_shift_estimated_flows_mark_border_unreliable_and_interior_reliable():
    prev, cur = texture(), texture(shift=(4.0, 0.0))
    est = FlowEstimator("dis")
    mask = reliability_mask(est(cur, prev), est(prev, cur))
    assert not mask[:, :3].any()  # disoccluded: p + w(p) falls left of frame t-1
    assert interior(mask).mean() > 0.98


def test_forward_backward_inconsistency_is_unreliable():
    back = constant_flow(-3, 0)
    assert not reliability_mask(back, constant_flow(0, 0))[:, 10:-10].any()  # occluded: no way back
    assert reliability_mask(back, constant_flow(3.2, 0.2))[:, 10:-10].all()  # within the 0.5 px^2 slack


def test_motion_boundary_at_a_flow_step():
    back = np.zeros((H, W, 2), np.float32)
    back[:, W // 2:, 0] = -5.0  # right half moves, left half is static
    fwd = -back  # consistent away from the step
    # Isolate the motion-boundary test: a huge forward-backward slack.
    mask = reliability_mask(back, fwd, fb_offset=1e9)
    assert not mask[:, W // 2 - 1:W // 2 + 1].any()  # the two columns whose central difference spans the step
    assert mask[:, :W // 2 - 1].all() and mask[:, W // 2 + 1:].all()
    assert reliability_mask(back, fwd, fb_offset=1e9, motion_offset=1e9).all()


def test_mask_rejects_mismatched_flows():
    with pytest.raises(ValueError, match=r"\(72, 96, 2\) and \(10, 10, 2\)"):
        reliability_mask(np.zeros((H, W, 2), np.float32), np.zeros((10, 10, 2), np.float32))


# ---------------------------------------------------------------------------------------------- worker


@dataclass
class Frame:
    index: int
    rgb: np.ndarray
    pts: int = 0


def moving_clip(n: int, start: int = 0, step: tuple[float, float] = (1.5, 0.5)) -> list[Frame]:
    return [Frame(i, texture(shift=(step[0] * i, step[1] * i)), pts=1000 * i) for i in range(start, start + n)]


def assert_same_records(got, expected):
    assert [r.index for r in got] == [r.index for r in expected]
    for g, e in zip(got, expected):
        assert g.rgb is e.rgb and g.pts == e.pts
        assert g.back.keys() == e.back.keys() == g.mask.keys()
        for k in e.back:
            np.testing.assert_array_equal(g.back[k], e.back[k])
            np.testing.assert_array_equal(g.mask[k], e.mask[k])


def test_iter_frame_flows_offsets_and_resize():
    clip = moving_clip(5)
    records = list(iter_frame_flows(clip, FlowEstimator("dis"), offsets=(1, 2), resize_to=(48, 36)))
    assert [sorted(r.back) for r in records] == [[], [1], [1, 2], [1, 2], [1, 2]]
    rec = records[3]
    assert rec.index == 3 and rec.rgb is clip[3].rgb and rec.pts == 3000
    assert rec.back[2].shape == (36, 48, 2) and rec.mask[2].shape == (36, 48)
    # Working-resolution pixels: the 2-frame backward shift of (-3, -1) px at full size is halved.
    np.testing.assert_allclose(np.median(rec.back[2].reshape(-1, 2), axis=0), [-1.5, -0.5], atol=0.2)


def test_iter_frame_flows_starting_mid_clip_has_no_flows_to_unseen_frames():
    records = list(iter_frame_flows(moving_clip(3, start=10), FlowEstimator("dis"), offsets=(1, 2)))
    assert [(r.index, sorted(r.back)) for r in records] == [(10, []), (11, [1]), (12, [1, 2])]


def test_iter_frame_flows_rejects_bad_offsets():
    with pytest.raises(ValueError, match="positive integers.*got \\(0, 1\\)"):
        iter_frame_flows([], FlowEstimator("dis"), offsets=(0, 1))


def test_worker_yields_the_same_records_as_the_synchronous_iterator():
    clip = moving_clip(6)
    expected = list(iter_frame_flows(clip, FlowEstimator("dis"), offsets=(1, 2), resize_to=(64, 48)))
    with FlowWorker(iter(clip), FlowEstimator("dis"), offsets=(1, 2), depth=2, resize_to=(64, 48)) as worker:
        got = list(worker)
    assert_same_records(got, expected)


def test_worker_reraises_an_error_from_the_frame_source_after_earlier_records():
    def frames():
        yield from moving_clip(2)
        raise RuntimeError("decoder broke")

    with FlowWorker(frames(), FlowEstimator("dis")) as worker:
        seen = []
        with pytest.raises(RuntimeError, match="decoder broke"):
            for rec in worker:
                seen.append(rec.index)
    assert seen == [0, 1]


def test_worker_reraises_an_error_from_the_estimator():
    def broken(a, b):
        raise InputError("flow needs two frames of the same size; got 1x1 and 2x2")

    with FlowWorker(iter(moving_clip(3)), broken) as worker:
        with pytest.raises(InputError, match="same size"):
            list(worker)


def test_worker_close_stops_the_thread_while_the_source_is_endless():
    produced = threading.Event()

    def endless():
        i = 0
        while True:
            produced.set()
            yield Frame(i, np.zeros((16, 16, 3), np.uint8))
            i += 1

    worker = FlowWorker(endless(), lambda a, b: np.zeros((*a.shape[:2], 2), np.float32), depth=2)
    first = next(iter(worker))
    assert first.index == 0 and produced.is_set()
    worker.close()
    assert not worker._thread.is_alive()
    assert list(worker) == []  # closed: nothing more comes out
    worker.close()  # idempotent


def test_worker_rejects_bad_arguments():
    with pytest.raises(ValueError, match="depth must be >= 1; got 0"):
        FlowWorker(iter([]), FlowEstimator("dis"), depth=0)
    with pytest.raises(ValueError, match="positive integers"):
        FlowWorker(iter([]), FlowEstimator("dis"), offsets=())


def test_module_exports_the_contract():
    for name in ("FLOW_METHODS", "FlowEstimator", "warp", "warp_numpy", "reliability_mask", "FlowWorker",
                 "FrameFlows", "iter_frame_flows"):
        assert hasattr(flowmod, name)
