import numpy as np
import torch
import pytest

from videostyle.model import features, losses, optimise
from videostyle.motion.temporal import initial_image, long_term_masks, warm_start_mask

STYLE_LAYERS = {"relu1_1": 0.2, "relu2_1": 0.2, "relu3_1": 0.2, "relu4_1": 0.2, "relu5_1": 0.2}


def _smooth_noise(h, w, cell, generator):
    """Bicubic-upsampled noise: a smooth, photo-like ``(1, 3, h, w)`` image in [0, 1]."""
    coarse = torch.rand(1, 3, h // cell + 2, w // cell + 2, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic").clamp(0, 1)


def _setup(temporal=()):
    g = torch.Generator().manual_seed(1)
    content = _smooth_noise(48, 64, 8, g) * 0.6 + 0.2
    style = (_smooth_noise(64, 64, 4, g) > 0.5).float() * 0.8 + 0.1  # saturated colour blobs
    enc = features.VGGEncoder(["relu4_2", *STYLE_LAYERS], features.resolve_weights("untrained"))
    targets = optimise.compute_style_targets(enc, [style], [1.0], list(STYLE_LAYERS))
    weights = optimise.LossWeights(1.0, 20.0, 0.0, {"relu4_2": 1.0}, STYLE_LAYERS)
    return enc, content, targets, weights, optimise.FrameObjective(enc, content, targets, weights, temporal)


@pytest.mark.slow
def test_style_loss_of_result_is_far_below_that_of_the_content_frame():
    _, content, _, _, objective = _setup()
    before = float(objective(content)[1]["style"])
    result = optimise.stylize_frame(objective, content, iterations=30)
    assert result.iterations == 30
    assert result.losses["style"] < 0.25 * before
    assert result.image.shape == content.shape
    assert result.image.min() >= 0 and result.image.max() <= 1


@pytest.mark.slow
def test_tol_stops_once_the_loss_flattens_not_after_the_first_tiny_lbfgs_step():
    _, content, _, _, objective = _setup()
    result = optimise.stylize_frame(objective, content, iterations=300, tol_loss_relative=0.01)
    h = result.history
    assert optimise.TOL_WINDOW < result.iterations < 300 and len(h) == result.iterations
    assert abs(h[-1 - optimise.TOL_WINDOW] - h[-1]) < 0.01 * h[-1]  # flat over the window: why it stopped
    assert all(abs(h[i - optimise.TOL_WINDOW] - h[i]) >= 0.01 * h[i]  # and not flat any earlier
               for i in range(optimise.TOL_WINDOW, len(h) - 1))
    assert h[-1] < 0.1 * h[0]


@pytest.mark.slow
def test_adam_also_lowers_the_loss():
    _, content, _, _, objective = _setup()
    before = float(objective(content)[0])
    result = optimise.stylize_frame(objective, content, iterations=20, optimizer="adam", learning_rate=0.05)
    assert result.losses["total"] < 0.7 * before


@pytest.mark.slow
def test_relative_tolerance_stops_early():
    _, content, _, _, objective = _setup()
    result = optimise.stylize_frame(objective, content, iterations=200, tol_loss_relative=0.05)
    assert 1 < result.iterations < 200


def test_style_blend_with_weights_one_zero_equals_single_style():
    enc, content, targets, _, _ = _setup()
    other = torch.rand(1, 3, 40, 40)
    style = torch.zeros(1, 3, 48, 48)
    style[:, 0, :, ::2] = 1
    single = optimise.compute_style_targets(enc, [style], [1.0], list(STYLE_LAYERS))
    blended = optimise.compute_style_targets(enc, [style, other], [1.0, 0.0], list(STYLE_LAYERS))
    for layer in STYLE_LAYERS:
        assert torch.allclose(single.grams[layer], blended.grams[layer])


@pytest.mark.slow
def test_temporal_term_pulls_result_towards_warped_previous():
    enc, content, targets, weights, plain = _setup()
    prev = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(7))
    term = optimise.TemporalTerm(prev, torch.ones(1, 1, 48, 64), 1e4)
    tied = optimise.FrameObjective(enc, content, targets, weights, [term])
    free = optimise.stylize_frame(plain, content, iterations=15).image
    held = optimise.stylize_frame(tied, content, iterations=15).image
    assert losses.temporal_loss(held, prev, torch.ones(48, 64)) < 0.5 * losses.temporal_loss(
        free, prev, torch.ones(48, 64))


def test_long_term_masks_count_each_pixel_once_closest_first():
    m1 = np.array([[1, 0, 0, 1]], np.float32)
    m2 = np.array([[1, 1, 0, 0]], np.float32)
    m4 = np.array([[1, 1, 1, 0]], np.float32)
    out = long_term_masks({4: m4, 1: m1, 2: m2})
    np.testing.assert_array_equal(out[1], m1)
    np.testing.assert_array_equal(out[2], [[0, 1, 0, 0]])
    np.testing.assert_array_equal(out[4], [[0, 0, 1, 0]])


def test_prev_warped_init_takes_content_where_the_mask_is_0():
    content = torch.zeros(1, 3, 2, 2)
    warped = torch.ones(1, 3, 2, 2)
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]])[None, None]
    init = initial_image("prev-warped", content=content, previous=warped, warped_previous=warped, mask=mask)
    assert torch.equal(init[0, 0], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    first = initial_image("prev-warped", content=content)  # frame 0 has no previous output
    assert torch.equal(first, content)
    noise = initial_image("noise", content=content, generator=torch.Generator().manual_seed(3))
    again = initial_image("noise", content=content, generator=torch.Generator().manual_seed(3))
    assert torch.equal(noise, again) and noise.std() > 0.1


@pytest.mark.slow
def test_range_weight_keeps_pixels_in_range_so_the_final_clamp_changes_little():
    enc, content, targets, weights, _ = _setup()
    assert float(losses.range_penalty(torch.tensor([[0.0, 0.5, 1.0]]))) == 0.0
    assert float(losses.range_penalty(torch.tensor([[-1.0, 2.0]]))) == 1.0
    outside = {}
    for range_weight in (0.0, 100.0):
        lw = optimise.LossWeights(weights.content, weights.style, weights.tv, weights.content_layers,
                                  weights.style_layers, range=range_weight)
        objective = optimise.FrameObjective(enc, content, targets, lw)
        last = []
        result = optimise.stylize_frame(objective, content, iterations=40,
                                        on_image=lambda done, image: last.append(image.clone()))
        outside[range_weight] = float((last[-1] - last[-1].clamp(0, 1)).abs().mean())
        assert ("range" in result.losses) == (range_weight > 0)
    assert outside[100.0] < 0.25 * outside[0.0]


def test_warm_start_mask_keeps_the_warp_wherever_the_flow_stays_in_the_frame():
    flow = np.zeros((3, 4, 2), np.float32)
    flow[..., 0] = 1.5  # every pixel comes from 1.5 px to its right: the last two columns from outside
    flow[0, 0, 1] = -0.5  # and the top-left one from above the frame
    inside = warm_start_mask("prev-warped-inside", flow)
    np.testing.assert_array_equal(inside, [[0, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]])
    reliable = np.array([[1, 0, 1, 0]] * 3, np.float32)
    np.testing.assert_array_equal(warm_start_mask("prev-warped", flow, reliable), reliable)
    with pytest.raises(ValueError, match="prev-warped init needs the flow's reliability mask"):
        warm_start_mask("prev-warped", flow)
    changed = np.array([[0, 1, 0, 0]] * 3, np.float32)
    # Content where the flow leaves the frame, and where it is unreliable and the source changed (column
    # 1); a change where the flow is reliable is the scene's own (light), and the warp stands.
    np.testing.assert_array_equal(warm_start_mask("prev-warped-unchanged", flow, reliable, changed),
                                  [[0, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(warm_start_mask("prev-warped-unchanged", flow, 1 - reliable, changed), inside)


def test_the_source_changed_where_a_moving_thing_uncovers_the_scene():
    """A dark bar over a grey wall moves 4 px right; the camera is still (zero flow). Where the bar
    was, the wall is uncovered: changed; the wall elsewhere and the bar's new place it still overlaps:
    not; where the bar arrives over the wall: changed."""
    from videostyle.motion.temporal import source_changed

    before, now = np.full((8, 16, 3), 128, np.uint8), np.full((8, 16, 3), 128, np.uint8)
    before[:, 4:8], now[:, 8:12] = 20, 20
    flow = np.zeros((8, 16, 2), np.float32)
    changed = source_changed(now, before, flow)
    assert changed[:, 5:7].min() == 1 and changed[:, 9:11].min() == 1  # uncovered, and newly covered
    assert changed[:, :3].max() == 0 and changed[:, 13:].max() == 0
    # The same scene brought along the right flow (the whole picture moved 4 px right): no change.
    moved = np.full((8, 16, 3), 128, np.uint8)
    moved[:, 8:12] = 20
    flow[..., 0] = -4.0
    assert source_changed(moved, before, flow)[:, 4:].max() == 0


@pytest.mark.parametrize("init, from_warp", [("prev-warped-unchanged", [1, 1, 1, 0, 0, 0, 0, 0]),
                                             ("prev-warped-inside", [1, 1, 1, 1, 1, 1, 0, 0]),
                                             ("prev-warped", [0] * 8)])
def test_video_warm_start_takes_content_only_where_the_init_mode_says(init, from_warp):
    """Flow all unreliable (a fast pan, say), the last two columns entering from outside the frame; the
    source changed at column 4 (with the 3x3 mean of the change test: columns 3-5)."""
    from videostyle.config import StyleConfig
    from videostyle.run.chain import _init_and_temporal

    cfg = StyleConfig(styles=("s.png",), init=init)
    content, previous = torch.zeros(1, 3, 3, 8), torch.ones(1, 3, 3, 8)
    flow = np.zeros((3, 8, 2), np.float32)
    flow[..., 0] = 1.5
    before, now = np.zeros((3, 8, 3), np.uint8), np.zeros((3, 8, 3), np.uint8)
    now[:, 4] = 255
    init_image, temporal, fresh = _init_and_temporal(cfg, 1, content, {0: previous}, {1: flow},
                                                     {1: np.zeros((3, 8), np.float32)}, torch.Generator(),
                                                     sources=(now, before))
    assert init_image[0, 0].tolist() == [from_warp] * 3
    assert fresh[0, 0].tolist() == [[1 - v for v in from_warp]] * 3  # the new-content term's pixels
    assert len(temporal) == 1 and float(temporal[0].mask.sum()) == 0.0
