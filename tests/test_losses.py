import torch

from videostyle.model import losses


def test_gram_is_normalised_by_chw():
    feats = torch.ones(1, 2, 3, 4)
    g = losses.gram(feats)
    assert g.shape == (1, 2, 2)
    # sum over 12 positions of 1*1, divided by C*H*W = 24
    assert torch.allclose(g, torch.full((1, 2, 2), 12 / 24))


def test_content_and_style_losses_are_zero_on_match_and_about_one_on_nothing():
    torch.manual_seed(0)
    feats = torch.rand(1, 8, 5, 5)
    assert losses.content_loss(feats, feats) == 0
    assert losses.style_loss(feats, losses.gram(feats)) == 0
    assert abs(float(losses.content_loss(torch.zeros_like(feats), feats)) - 1.0) < 1e-5
    assert abs(float(losses.style_loss(torch.zeros_like(feats), losses.gram(feats))) - 1.0) < 1e-5


def test_temporal_loss_is_zero_when_image_equals_warped_previous():
    img = torch.rand(1, 3, 6, 7)
    mask = torch.ones(6, 7)
    assert losses.temporal_loss(img, img.clone(), mask) == 0
    assert losses.temporal_loss(img, 1 - img, mask) > 0


def test_temporal_loss_ignores_masked_out_pixels():
    img = torch.zeros(1, 3, 4, 4)
    prev = torch.zeros(1, 3, 4, 4)
    prev[..., :2] = 1.0
    mask = torch.ones(4, 4)
    mask[:, :2] = 0
    assert losses.temporal_loss(img, prev, mask) == 0


def test_total_variation_zero_for_constant_image_positive_for_edges():
    assert losses.total_variation(torch.full((1, 3, 5, 5), 0.3)) == 0
    img = torch.zeros(1, 3, 5, 5)
    img[..., 2:] = 1
    assert losses.total_variation(img) > 0


def test_gram_backward_equals_autograd_of_the_plain_product():
    g = torch.Generator().manual_seed(0)
    feats = torch.rand(2, 5, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(2, 5, 5, generator=g, dtype=torch.float64)
    (losses.gram(feats) * weight).sum().backward()
    ours = feats.grad.clone()
    feats.grad = None
    flat = feats.reshape(2, 5, 12)
    ((torch.bmm(flat, flat.transpose(1, 2)) / 60) * weight).sum().backward()
    torch.testing.assert_close(ours, feats.grad)
    assert torch.autograd.gradcheck(losses.gram, (feats.detach().requires_grad_(True),))


def test_precomputed_target_power_gives_the_same_loss():
    g = torch.Generator().manual_seed(1)
    x, target = torch.rand(1, 4, 6, 6, generator=g), torch.rand(1, 4, 6, 6, generator=g)
    assert losses.content_loss(x, target, losses.power(target)) == losses.content_loss(x, target)
