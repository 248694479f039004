"""`image --output-size source`: a stylised picture brought from the working size to the source's size.

A plain upscale of the working-size result is soft: its brush strokes are as many pixels wide as at the
working size, and the photo's fine detail is missing. As the coarse-to-fine octaves do for a frame
(:func:`videostyle.model.optimise.stylise_coarse_to_fine`), the result is upsampled in steps of 2x and
refined at each step by a few warm-started iterations against the content at that size, with the same
style targets (Gram matrices are normalised by C*H*W, so targets made at the working size serve every
size; the style's texture keeps its size in pixels).

Memory stays bounded: VGG runs in bands or on tiles where a step's frame needs more than the budget
(:mod:`videostyle.model.banded`, :mod:`videostyle.model.tiled`: the same result), and L-BFGS keeps at
most :data:`REFINE_HISTORY` correction pairs (each two ``3 x H x W`` float32 vectors: 290 MB at 4032x3024).

Convention: sizes are ``(W, H)`` px; pictures ``(H, W, 3)`` uint8 RGB.
"""

from __future__ import annotations

import numpy as np
import torch

from videostyle import images
from videostyle.model import colour
from videostyle.model.masks import FrameMasks, composite

# L-BFGS pairs kept while refining at the larger sizes (neural-style keeps 5 at its largest sizes).
REFINE_HISTORY = 5


def refine_sizes(working: tuple[int, int], source: tuple[int, int]) -> list[tuple[int, int]]:
    """The sizes the result is refined at, smallest first: the working size doubled while at least 1.5x
    is left to the source's size (no near-duplicate last step), then the source size itself; ``[]`` when
    the working size is the source's or larger."""
    if working[0] >= source[0] and working[1] >= source[1]:
        return []
    sizes = []
    w, h = working
    while 3 * w <= source[0] and 3 * h <= source[1]:
        w, h = 2 * w, 2 * h
        sizes.append((w, h))
    return [*sizes, tuple(source)]


def refine_iterations(working: tuple[int, int], source: tuple[int, int], iterations: int) -> int:
    """Iterations :func:`upscale_still` runs in all (for a progress bar's total)."""
    return len(refine_sizes(working, source)) * iterations if iterations > 0 else 0


def upscale_still(stylizer, rgb: np.ndarray, result: np.ndarray, *, iterations: int, tile: int | None = None,
                  max_memory: int | None = None) -> np.ndarray:
    """``result`` (the working-size picture, ``(h, w, 3)`` uint8) brought to ``rgb``'s size ``(H, W, 3)``.

    ``stylizer``: the :class:`~videostyle.step.Stylizer` that made ``result`` (its encoder, style
    targets and loss weights are reused). ``iterations`` per size (:func:`refine_sizes`); 0: a plain
    bicubic upscale. A ``--mask`` is composited and ``--preserve-colors`` applied at each size, as for
    the working-size result.
    """
    source = (rgb.shape[1], rgb.shape[0])
    working = (result.shape[1], result.shape[0])
    if iterations <= 0:
        return images.resize_rgb(result, source)
    cfg = stylizer.cfg
    saved = stylizer.tile, stylizer.history
    try:
        for size in refine_sizes(working, source):
            stylizer.plan_memory(size, tile=tile, max_memory=max_memory, max_history=REFINE_HISTORY)
            content = images.to_tensor(images.resize_rgb(rgb, size), stylizer.device)
            init = stylizer.to_optimised(images.to_tensor(images.resize_rgb(result, size), stylizer.device))
            out = stylizer.stylize(stylizer.to_optimised(content), init, iterations=iterations,
                                   warm_started=True, evaluate_result=False).image
            result = images.to_uint8(_finish(cfg, out, content, size, working))
            del content, init, out
            if stylizer.device.type == "cuda":
                torch.cuda.empty_cache()
    finally:
        stylizer.tile, stylizer.history = saved
    # A source smaller than the working size: the result is scaled down to it.
    return result if result.shape[:2] == rgb.shape[:2] else images.resize_rgb(result, source)


def _finish(cfg, image: torch.Tensor, content: torch.Tensor, size: tuple[int, int],
            working: tuple[int, int]) -> torch.Tensor:
    """As :meth:`~videostyle.step.Stylizer.finish`, at ``size``: the content's chroma, then the mask
    (its feathering scaled with the picture)."""
    if cfg.preserve_colors:
        image = colour.with_chroma_of(image, content)
    if cfg.mask:
        masks = FrameMasks(cfg.mask, size, feather_px=cfg.mask_feather * size[0] / working[0])
        image = composite(image, content, masks.tensor(0, image.device))
    return image
