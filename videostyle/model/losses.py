"""Loss terms of the Gatys/Ruder objective, as pure functions.

Convention:
    Features are ``(B, C, H, W)`` float tensors from :mod:`videostyle.model.features`; images are
    ``(B, 3, H, W)`` float32 in [0, 1]. Every term returns a scalar tensor.

    Content and style terms are normalised by the magnitude of their target (``mean(target**2)``), so a
    term is ~1 when the image carries none of the target and 0 when it matches. This makes layer weights
    comparable across layers and across weights (ImageNet or untrained), which VGG's raw activations
    (spanning orders of magnitude between relu1_1 and relu5_1) are not.
"""

from __future__ import annotations

import torch

EPS = 1e-12  # keeps a normaliser of an all-zero target finite


class _Gram(torch.autograd.Function):
    """``F F^T / n`` with a backward of one matrix product instead of autograd's two.

    For ``G = F F^T / n``: ``dL/dF = (dG + dG^T) F / n``; autograd's bmm backward computes ``dG F`` and
    ``(F^T dG)^T`` separately. The Gram matrices are ~9% of an iteration (measured at 256 px), a third
    of which is this second product.
    """

    @staticmethod
    def forward(ctx, flat: torch.Tensor, n: float) -> torch.Tensor:
        ctx.save_for_backward(flat)
        ctx.n = n
        return torch.bmm(flat, flat.transpose(1, 2)) / n

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (flat,) = ctx.saved_tensors
        # Scale the (C, C) matrix, not the (C, H*W) product: measured 5 ms of an iteration at 256 px.
        return torch.bmm((grad + grad.transpose(1, 2)) / ctx.n, flat), None


def gram(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix normalised by C*H*W (Gatys et al. 2016).

    Args:
        features: ``(B, C, H, W)`` float.
    Returns:
        ``(B, C, C)`` float, ``G[b, i, j] = sum_p F[b,i,p] F[b,j,p] / (C*H*W)``.
    """
    b, c, h, w = features.shape
    return _Gram.apply(features.reshape(b, c, h * w), float(c * h * w))


class _WeightedGram(torch.autograd.Function):
    """``(F * s) F^T / n`` for per-position weights ``s``, whose gradient weighs each position by ``m``
    instead (``m <= s``; the positions' ``s - m`` counted as constants). Saves nothing but ``F`` (which
    VGG's graph keeps anyway) and the weights: a weighted copy of the features would be one more
    layer's worth of memory held until the backward pass."""

    @staticmethod
    def forward(ctx, flat: torch.Tensor, share: torch.Tensor, moved: torch.Tensor, n: float) -> torch.Tensor:
        ctx.save_for_backward(flat, moved)
        ctx.n = n
        return torch.bmm(flat * share, flat.transpose(1, 2)) / n

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        flat, moved = ctx.saved_tensors
        return torch.bmm((grad + grad.transpose(1, 2)) / ctx.n, flat * moved), None, None, None


def weighted_gram(features: torch.Tensor, share: torch.Tensor, moved: torch.Tensor | None = None,
                  count: float | None = None) -> torch.Tensor:
    """The Gram matrix of the positions ``share`` picks: ``sum_p s_p F_p F_p^T / (C * sum_p s_p)``, so it
    is what :func:`gram` gives for a frame made of those positions alone.

    Args:
        features: ``(B, C, H, W)`` float.
        share: ``(1, 1, H, W)`` in [0, 1], each position's weight (the share of its cell that is new
            content, :class:`videostyle.model.objective.NewContentStyle`); its sum must be > 0.
        moved: ``(1, 1, H, W)``, ``<= share``: each position's weight in the gradient, the rest of its
            share held constant (default: ``share``, the exact gradient).
        count: ``C * sum(share)`` when the caller has it (the optimiser evaluates the same shares every
            iteration; summing them there would also wait for the GPU).
    Returns:
        ``(B, C, C)`` float.
    """
    b, c, h, w = features.shape
    share = share.reshape(1, 1, h * w)
    moved = share if moved is None else moved.reshape(1, 1, h * w)
    if count is None:
        count = float(c) * float(share.sum())
    return _WeightedGram.apply(features.reshape(b, c, h * w), share, moved, count)


def power(target: torch.Tensor) -> torch.Tensor:
    """``mean(target^2)``: the normaliser of :func:`normalised_mse`, computed once per target."""
    return target.pow(2).mean()


def normalised_mse(x: torch.Tensor, target: torch.Tensor,
                   target_power: torch.Tensor | None = None) -> torch.Tensor:
    """``mean((x - target)^2) / mean(target^2)``: 0 on a match, ~1 when x carries nothing of target.

    ``target_power``: :func:`power` of ``target`` when the caller has it (the optimiser evaluates the
    same target every iteration)."""
    if target_power is None:
        target_power = power(target)
    return (x - target).pow(2).mean() / (target_power + EPS)


def content_loss(features: torch.Tensor, target: torch.Tensor,
                 target_power: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised feature reconstruction loss for one layer; both ``(B, C, H, W)``."""
    return normalised_mse(features, target, target_power)


def style_loss(features: torch.Tensor, target_gram: torch.Tensor,
               target_power: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised Gram matrix loss for one layer.

    Args:
        features: ``(B, C, H, W)`` of the image being optimised.
        target_gram: ``(1 or B, C, C)`` Gram matrix of the style image (blended, for several styles).
        target_power: :func:`power` of ``target_gram``, when already known.
    """
    return normalised_mse(gram(features), target_gram.expand(features.shape[0], -1, -1), target_power)


def temporal_loss(image: torch.Tensor, warped_previous: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Ruder et al. short-term temporal loss: ``mean(mask * (x - warped_prev)^2)``.

    Args:
        image: ``(B, 3, H, W)`` in [0, 1], the frame being optimised.
        warped_previous: ``(B, 3, H, W)`` in [0, 1], previous output warped to this frame.
        mask: ``(H, W)`` or ``(B, 1, H, W)`` in {0, 1} (or [0, 1]): 1 where the warp is reliable.
    Returns:
        Scalar; the mean runs over all pixels and channels (Ruder's 1/D normalisation).
    """
    if mask.dim() == 2:
        mask = mask[None, None]
    return (mask * (image - warped_previous).pow(2)).mean()


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between neighbouring pixels of ``(B, C, H, W)``; scalar."""
    dx = image[..., :, 1:] - image[..., :, :-1]
    dy = image[..., 1:, :] - image[..., :-1, :]
    return dx.pow(2).mean() + dy.pow(2).mean()


def range_penalty(image: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of ``(B, C, H, W)`` pixels outside [0, 1] to it; 0 inside. Scalar.

    The optimiser works on unconstrained pixels and the result is clamped once at the end (clamping
    between steps breaks L-BFGS). Without this term the pixels drift out of range: measured at 256 px,
    the clamped result's loss was 25% above the optimiser's own, and it got worse with more
    iterations; with it (weight 100) the clamp changes almost nothing and the loss keeps falling.
    """
    return ((image - 1).clamp(min=0).pow(2) + (-image).clamp(min=0).pow(2)).mean()
