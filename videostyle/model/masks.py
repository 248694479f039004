"""Region masks (``--mask``): stylise only where the mask is white, keep the content elsewhere.

A mask is a greyscale image (PNG, JPEG, ...) or a video; white = stylise, black = keep the frame as it
is. A video mask gives its frame t for frame t and holds its last frame when it is shorter than the
clip. Masks are resized to the working size and feathered (Gaussian blur) so the edges are soft.

Convention:
    Masks are ``(H, W)`` float32 in [0, 1] at the working size (``(width, height)`` = ``size``), and
    ``(1, 1, H, W)`` tensors for :func:`composite`; images ``(1, 3, H, W)`` float32 in [0, 1].
    ``feather`` is the Gaussian's sigma in working-size pixels; the kernel spans +-3 sigma, so pixels
    further than that from any white pixel stay exactly 0 (untouched by the composite).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from videostyle.errors import InputError


def feather(mask: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian-blur an ``(H, W)`` mask in [0, 1] with sigma ``sigma_px`` (0: unchanged); float32."""
    mask = np.ascontiguousarray(mask, dtype=np.float32)
    if sigma_px <= 0:
        return mask
    k = 2 * math.ceil(3 * sigma_px) + 1
    # BORDER_REPLICATE: a mask white up to the frame's edge stays white there.
    return cv2.GaussianBlur(mask, (k, k), sigma_px, borderType=cv2.BORDER_REPLICATE)


def _to_mask(grey: np.ndarray, size: tuple[int, int], sigma_px: float) -> np.ndarray:
    """``(h, w)`` uint8 grey -> ``(H, W)`` float32 in [0, 1] at ``size = (W, H)``, feathered."""
    if (grey.shape[1], grey.shape[0]) != tuple(size):
        shrinking = size[0] * size[1] < grey.shape[0] * grey.shape[1]
        grey = cv2.resize(grey, tuple(size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return feather(grey.astype(np.float32) / 255.0, sigma_px)


class FrameMasks:
    """The mask of each frame, read from an image or a video file.

    Args:
        path: greyscale image or video (colour is converted to grey, BT.601 weights).
        size: working ``(width, height)`` px.
        feather_px: Gaussian sigma in working-size px (see module docstring).
    Raises:
        InputError: the file is missing or neither an image nor a video with decodable frames.

    A video mask is decoded on first use and kept in memory at the working size (one byte per pixel
    per frame), so frames can be asked for in any order (backward passes, resume).
    """

    def __init__(self, path: str | os.PathLike, size: tuple[int, int], *, feather_px: float = 3.0):
        self.path = Path(path)
        self.size = tuple(size)
        self.feather_px = float(feather_px)
        self._still: np.ndarray | None = None
        self._video_frames: list[np.ndarray] | None = None
        self._info = None
        if not self.path.is_file():
            raise InputError(f"mask not found: {str(self.path)!r}")
        try:
            with Image.open(self.path) as img:
                self._still = _to_mask(np.asarray(img.convert("L"), dtype=np.uint8), self.size, self.feather_px)
            return
        except Image.DecompressionBombError as exc:
            from videostyle.images import too_large
            raise too_large(self.path, exc) from exc
        except (UnidentifiedImageError, OSError):
            pass  # not an image: try it as a video
        from videostyle.media.probe import probe_video

        try:
            self._info = probe_video(self.path)
        except InputError as exc:
            raise InputError(f"cannot read mask {str(self.path)!r}: expected a greyscale image or a video "
                             f"({exc})") from exc

    def frame(self, index: int) -> np.ndarray:
        """Mask of frame ``index`` ``(H, W)`` float32 in [0, 1] (the last mask frame past its end)."""
        if self._still is not None:
            return self._still
        if self._video_frames is None:
            self._video_frames = self._decode()
        grey = self._video_frames[min(index, len(self._video_frames) - 1)]
        return _to_mask(grey, self.size, self.feather_px)

    def tensor(self, index: int, device: torch.device | str) -> torch.Tensor:
        """:meth:`frame` as a ``(1, 1, H, W)`` float32 tensor on ``device``."""
        return torch.from_numpy(self.frame(index))[None, None].to(device)

    def _decode(self) -> list[np.ndarray]:
        from videostyle.media.decode import iter_frames

        frames = []
        try:
            for frame in iter_frames(self._info):
                grey = cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2GRAY)
                if (grey.shape[1], grey.shape[0]) != self.size:
                    grey = cv2.resize(grey, self.size, interpolation=cv2.INTER_AREA)
                frames.append(grey)
        except InputError as exc:
            raise InputError(f"cannot read mask {str(self.path)!r}: {exc}") from exc
        return frames


def composite(stylised: torch.Tensor, content: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mask * stylised + (1 - mask) * content``: ``(1, 3, H, W)`` images, ``(1, 1, H, W)`` mask in [0, 1].

    Where the mask is exactly 0 the result is exactly ``content``.
    """
    return torch.where(mask > 0, mask * stylised + (1 - mask) * content, content)
