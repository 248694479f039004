"""Still-image helpers: load, resize, convert between uint8 arrays and tensors.

Convention:
    Arrays are ``(H, W, 3)`` uint8 RGB; tensors are ``(1, 3, H, W)`` float32 in [0, 1].
    Sizes are given as ``(width, height)`` in pixels.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as upright RGB ``(H, W, 3)`` uint8 (EXIF orientation applied)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image not found: {str(path)!r}")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"not an image file: {str(path)!r} ({exc})") from exc


def working_size(width: int, height: int, long_edge: int) -> tuple[int, int]:
    """Scale ``(width, height)`` so the long edge is ``long_edge``; both results even (>= 2)."""
    scale = long_edge / max(width, height)
    w = max(2, int(round(width * scale / 2)) * 2)
    h = max(2, int(round(height * scale / 2)) * 2)
    return w, h


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``(H, W, 3)`` uint8 to ``size=(width, height)``: area filter down, bicubic up."""
    h, w = rgb.shape[:2]
    if (w, h) == tuple(size):
        return rgb
    shrinking = size[0] * size[1] < w * h
    return cv2.resize(rgb, tuple(size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


def to_tensor(rgb: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(1, 3, H, W)`` float32 in [0, 1] on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(2, 0, 1)[None].float().contiguous() / 255.0


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``(1, 3, H, W)`` float in [0, 1] -> ``(H, W, 3)`` uint8 (rounded, clamped)."""
    arr = image.detach()[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0)
    return arr.cpu().numpy()


def save_image(rgb: np.ndarray, path: str | os.PathLike) -> None:
    """Write ``(H, W, 3)`` uint8; the format follows the extension (PNG, JPEG, ...)."""
    Image.fromarray(rgb).save(path)
