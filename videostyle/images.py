"""Still-image helpers: load, resize, convert between uint8 arrays and tensors.

Convention:
    Arrays are ``(H, W, 3)`` uint8 RGB; tensors are ``(1, 3, H, W)`` float32 in [0, 1].
    Sizes are given as ``(width, height)`` in pixels.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from videostyle.errors import InputError
from videostyle.paths import write_atomic


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as upright RGB ``(H, W, 3)`` uint8 (EXIF orientation applied)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image not found: {str(path)!r}")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except Image.DecompressionBombError as exc:
        raise too_large(path, exc) from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"not an image file: {str(path)!r} ({exc})") from exc


def too_large(path: str | os.PathLike, exc: Exception) -> InputError:
    """The one-line error for an image Pillow refuses to decode as a possible decompression bomb."""
    found = re.search(r"\((\d+) pixels\)", str(exc))  # Pillow: "Image size (400000000 pixels) exceeds ..."
    limit = Image.MAX_IMAGE_PIXELS * 2 if Image.MAX_IMAGE_PIXELS else None  # Pillow refuses above twice it
    has = f"{found.group(1)} pixels" if found else "more pixels than Pillow decodes safely"
    side = int(limit ** 0.5) if limit else None
    most = f"at most {limit} pixels (about {side}x{side})" if limit else "a smaller image"
    return InputError(f"image too large: {str(path)!r} has {has}; expected {most}: scale it down")


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


def save_image_atomic(image: np.ndarray | Image.Image, path: str | os.PathLike) -> None:
    """Write an image (``(H, W, 3)`` uint8 or a PIL image) to ``path`` whole or not at all: encoded in
    memory (format from the extension), then through the hidden temp file ``.NAME.tmpEXT``, created
    exclusively (a link planted there is removed, not written through), renamed over ``path``."""
    path = Path(path)
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    img.save(buf, format=Image.registered_extensions()[path.suffix.lower()])
    write_atomic(path, buf.getvalue(), tmp=path.with_name(f".{path.name}.tmp{path.suffix}"))
