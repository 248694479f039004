"""Loss terms of the Gatys/Ruder objective, as pure functions.

Convention:
    Features are ``(B, C, H, W)`` float tensors from :mod:`videostyle.features`; images are
    ``(B, 3, H, W)`` float32 in [0, 1]. Every term returns a scalar tensor.

    Content and style terms are normalised by the magnitude of their target (``mean(target**2)``), so a
    term is ~1 when the image carries none of the target and 0 when it matches. This makes layer weights
    comparable across layers and across weights (ImageNet or untrained), which VGG's raw activations
    (spanning orders of magnitude between relu1_1 and relu5_1) are not.
"""

from __future__ import annotations

import torch

_EPS = 1e-12


def gram(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix normalised by C*H*W (Gatys et al. 2016).

    Args:
        features: ``(B, C, H, W)`` float.
    Returns:
        ``(B, C, C)`` float, ``G[b, i, j] = sum_p F[b,i,p] F[b,j,p] / (C*H*W)``.
    """
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w)
    return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)


def normalised_mse(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean((x - target)^2) / mean(target^2)``: 0 on a match, ~1 when x carries nothing of target."""
    return (x - target).pow(2).mean() / (target.pow(2).mean() + _EPS)


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Normalised feature reconstruction loss for one layer; both ``(B, C, H, W)``."""
    return normalised_mse(features, target)


def style_loss(features: torch.Tensor, target_gram: torch.Tensor) -> torch.Tensor:
    """Normalised Gram matrix loss for one layer.

    Args:
        features: ``(B, C, H, W)`` of the image being optimised.
        target_gram: ``(1 or B, C, C)`` Gram matrix of the style image (blended, for several styles).
    """
    return normalised_mse(gram(features), target_gram.expand(features.shape[0], -1, -1))


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
