"""Colour preservation (Gatys, Bethge, Hertzmann, Shechtman 2016, "Preserving colour in neural
artistic style transfer", luminance-only transfer).

The optimiser works on luminance images (Y replicated to three channels); the style images' luminance
is matched to the content's mean and standard deviation; the output is the optimised Y combined with
the content frame's own chroma (I and Q of YIQ).

Convention:
    Images are ``(B, 3, H, W)`` float32. RGB is in [0, 1]; YIQ (NTSC, BT.601 primaries) has Y in [0, 1],
    I in about [-0.596, 0.596] and Q in about [-0.523, 0.523]. Statistics are per image over all pixels.
"""

from __future__ import annotations

import functools

import torch

# NTSC YIQ (FCC, BT.601 luma weights). Rows: Y, I, Q.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114],
                            [0.595716, -0.274453, -0.321263],
                            [0.211456, -0.522591, 0.311135]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)
_EPS = 1e-6


_MATRICES = {
    "rgb_to_yiq": _RGB_TO_YIQ,
    "yiq_to_rgb": _YIQ_TO_RGB,
    "iq_to_rgb": _YIQ_TO_RGB[:, 1:],        # (3, 2): RGB offset from I and Q
    "y_to_rgb": _YIQ_TO_RGB[:, 0].view(1, 3, 1, 1),  # RGB per unit of Y (each about 1)
}


@functools.lru_cache(maxsize=32)
def _matrix_on(name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """:data:`_MATRICES` ``[name]`` copied to ``device`` once, not once per frame (a copy to a GPU waits
    for it)."""
    return _MATRICES[name].to(device=device, dtype=dtype)


def _apply(name: str, image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", _matrix_on(name, image.device, image.dtype), image)


def rgb_to_yiq(rgb: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` RGB in [0, 1] -> ``(B, 3, H, W)`` YIQ (channel 0 = Y in [0, 1])."""
    return _apply("rgb_to_yiq", rgb)


def yiq_to_rgb(yiq: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` YIQ -> ``(B, 3, H, W)`` RGB (not clamped; exact inverse of :func:`rgb_to_yiq`)."""
    return _apply("yiq_to_rgb", yiq)


def luminance(rgb: torch.Tensor) -> torch.Tensor:
    """Y of ``(B, 3, H, W)`` RGB in [0, 1], replicated to ``(B, 3, H, W)``: the grey image VGG sees."""
    y = rgb_to_yiq(rgb)[:, :1]
    return y.expand(-1, 3, -1, -1).contiguous()


def match_luminance(style_y: torch.Tensor, content_y: torch.Tensor) -> torch.Tensor:
    """Affinely map ``style_y``'s luminance to ``content_y``'s mean and standard deviation (the paper's
    luminance matching), clamped to [0, 1].

    Args:
        style_y, content_y: luminance images ``(1, 3, H_s, W_s)`` and ``(1, 3, H, W)`` (sizes may differ).
    Returns:
        ``(1, 3, H_s, W_s)`` in [0, 1].
    """
    mu_s, sigma_s = style_y.mean(), style_y.std()
    mu_c, sigma_c = content_y.mean(), content_y.std()
    return ((style_y - mu_s) * (sigma_c / (sigma_s + _EPS)) + mu_c).clamp(0.0, 1.0)


def with_chroma_of(image: torch.Tensor, colour_source: torch.Tensor) -> torch.Tensor:
    """The luminance of ``image`` with the chroma (I, Q) of ``colour_source``, as RGB in [0, 1].

    Y is clipped, per pixel, to the range in which that pixel's (I, Q) stays inside the RGB cube, so the
    chroma is kept exactly (up to 8-bit rounding once saved) instead of being bent by clamping RGB.
    The range is never empty: ``colour_source``'s own Y lies in it.

    Args:
        image: ``(B, 3, H, W)`` the optimised (luminance) image; its Y is taken (channels need not be equal).
        colour_source: ``(B, 3, H, W)`` RGB in [0, 1], the content frame.
    Returns:
        ``(B, 3, H, W)`` RGB in [0, 1].
    """
    y = rgb_to_yiq(image)[:, :1]
    iq = rgb_to_yiq(colour_source)[:, 1:]
    # Per channel c: RGB_c = a_c * Y + offset_c(I, Q), with a_c > 0 (about 1).
    a = _matrix_on("y_to_rgb", image.device, image.dtype)
    offset = _apply("iq_to_rgb", iq)  # (B, 3, H, W)
    low = ((0.0 - offset) / a).amax(dim=1, keepdim=True)
    high = ((1.0 - offset) / a).amin(dim=1, keepdim=True)
    y = torch.maximum(torch.minimum(y, high), low)
    return (a * y + offset).clamp(0.0, 1.0)
