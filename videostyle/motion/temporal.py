"""Ruder et al. (2016) frame initialisation and temporal terms, built from flows and masks.

Convention:
    Images are ``(1, 3, H, W)`` float32 in [0, 1]; masks ``(1, 1, H, W)`` float32 in {0, 1};
    flows ``(H, W, 2)`` float32 px, channel 0 = x, direction t -> t-k ("backward", see flow.py).
"""

from __future__ import annotations

from typing import Mapping

import cv2
import numpy as np
import torch

from videostyle.motion.flow import warp, warp_numpy

# A source pixel "changed" between frames when, after the warp, one of its colour channels differs by
# more than this (in [0, 1], over a 3x3 mean). With the flow check failed there too, it marks what a
# moving thing covers or uncovers: 10-14% of bikes.mp4's frames while legs walk past the bikes (dark on
# dark: a higher threshold missed most of it), 0.6-2% of samples/harbour.mp4's (whose flat sky fails
# the flow check but does not change), 0.2% of realshort.mp4's. docs/BENCHMARKS.md, "New content".
SOURCE_CHANGE = 0.03


def source_changed(current: np.ndarray, previous: np.ndarray, flow_back: np.ndarray) -> np.ndarray:
    """Where frame t's source shows something other than frame t-1's brought along the flow: ``(H, W)``
    float32 in {0, 1}, 1 = changed by more than :data:`SOURCE_CHANGE`.

    Args:
        current, previous: source frames t and t-1 at the flow's size, ``(H, W, 3)`` uint8.
        flow_back: ``(H, W, 2)`` px, t -> t-1.
    """
    warped = warp_numpy(previous.astype(np.float32) / 255.0, flow_back)
    diff = np.abs(current.astype(np.float32) / 255.0 - warped).max(axis=-1)
    diff = cv2.blur(diff, (3, 3))  # one noisy pixel is not a change
    return (diff > SOURCE_CHANGE).astype(np.float32)


def long_term_masks(masks: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Closest-first weighting of long-term masks (Ruder et al. eq. 6).

    A pixel counts towards frame t-k only where no closer frame t-j (j < k) already covers it:
    ``c_long[k] = max(c[k] - sum_{j<k} c[j], 0)``.

    Args:
        masks: ``{k: (H, W) float32 in {0, 1}}`` reliability of the warp from frame t-k.
    Returns:
        ``{k: (H, W) float32}`` with the same keys.
    """
    out: dict[int, np.ndarray] = {}
    covered = None
    for k in sorted(masks):
        mask = masks[k].astype(np.float32)
        out[k] = mask if covered is None else np.maximum(mask - covered, 0.0)
        covered = mask if covered is None else covered + mask
    return out


def warp_previous(previous: torch.Tensor, flow_back: np.ndarray) -> torch.Tensor:
    """Warp an earlier output ``(1, 3, H, W)`` to the current frame with flow t -> t-k ``(H, W, 2)``.

    Bicubic, clamped to [0, 1]: a bilinear warp blurs the brush texture, and the warm start and the
    temporal loss then pull every frame towards that blur, frame after frame. Measured (untrained VGG-19,
    128 px): one bilinear warp of a stylised frame raised its style loss 3.7x, a bicubic one 1.6x; with the
    temporal loss at weight 200, the mean style loss over 6 frames was 1.52x that of independent frames
    with bilinear warps and 0.98x with bicubic ones (docs/TEMPORAL.md).
    """
    return warp(previous, torch.from_numpy(flow_back).to(previous.device), mode="bicubic").clamp_(0.0, 1.0)


def warm_start_mask(mode: str, flow_back: np.ndarray, reliable: np.ndarray | None = None,
                    changed: np.ndarray | None = None) -> np.ndarray:
    """Where the warm start of frame t takes the previous output warped by ``flow_back`` (t -> t-1,
    ``(H, W, 2)`` px) rather than the content frame: ``(H, W)`` float32 in {0, 1}.

    ``prev-warped-unchanged`` (default): wherever ``p + flow(p)`` lies inside the frame, except where
    the flow is unreliable (``reliable`` 0) and the source changed (``changed``, :func:`source_changed`,
    is 1): there the warp is wrong, not just unsure. What a moving thing uncovers would
    otherwise start from the thing's own stylised pixels, brought along the background's flow: a smear
    that the later-frame iterations do not repaint and the temporal term then holds (issue 18, item
    6; docs/BENCHMARKS.md "New content"). Those pixels start from the content and the new-content style
    term paints them.
    ``prev-warped-inside``: wherever ``p + flow(p)`` lies inside the frame. Pixels whose flow
    leaves the frame (new scenery at an edge of a pan) would be border pixels smeared into streaks, so
    they start from the content frame; every other pixel starts stylised. ``prev-warped`` (the first design's, docs/ARCHITECTURE.md
    first choice): only where the ``reliable`` ``(H, W)`` mask (:func:`~videostyle.motion.flow.reliability_mask`)
    is 1. Measured (docs/BENCHMARKS.md): the unreliable pixels start unstylised, and on flat regions
    (a clear sky, where the flow check fails) they restart from the photo every frame.
    """
    if mode == "prev-warped":
        if reliable is None:
            raise ValueError("prev-warped init needs the flow's reliability mask")
        return reliable.astype(np.float32)
    if mode not in ("prev-warped-inside", "prev-warped-unchanged"):
        raise ValueError(f"no warm-start mask for init {mode!r}")
    h, w = flow_back.shape[:2]
    x = np.arange(w, dtype=np.float32)[None, :] + flow_back[..., 0]
    y = np.arange(h, dtype=np.float32)[:, None] + flow_back[..., 1]
    inside = ((x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)).astype(np.float32)
    if mode == "prev-warped-unchanged":
        if changed is None or reliable is None:
            raise ValueError("prev-warped-unchanged init needs the flow's reliability and the source's change masks")
        return inside * (1.0 - (1.0 - reliable.astype(np.float32)) * changed)
    return inside


def mask_tensor(mask: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """``(H, W)`` array -> ``(1, 1, H, W)`` float32 tensor on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None].to(device)


def initial_image(mode: str, *, content: torch.Tensor, previous: torch.Tensor | None = None,
                  warped_previous: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """The optimiser's starting image for one frame.

    Modes: ``content``; ``noise`` (uniform in [0, 1], seeded by ``generator``); ``prev`` (the previous
    output as is); the ``prev-warped`` modes: the previous output warped by the
    backward flow where ``mask`` ``(1, 1, H, W)`` is 1, ``content`` elsewhere (the mask tells the two
    apart: :func:`warm_start_mask`). Without a previous output (frame 0), the ``prev`` modes fall back
    to ``content``.
    """
    if mode == "noise":
        return torch.rand(content.shape, generator=generator, dtype=content.dtype).to(content.device)
    if mode == "content" or previous is None:
        return content.clone()
    if mode == "prev":
        return previous.clone()
    if mode.startswith("prev-warped"):
        if warped_previous is None or mask is None:
            raise ValueError(f"{mode} init needs the warped previous output and its warm-start mask")
        return mask * warped_previous + (1 - mask) * content
    raise ValueError(f"unknown init mode {mode!r}")
