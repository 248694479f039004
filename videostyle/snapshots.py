"""``--save-every N``: the first frame's image every N optimiser iterations, for tuning settings.

Files go beside the output as ``OUTPUT_STEM.iter_%04d.png`` (e.g. ``clip.iter_0050.png`` for
``-o clip.mp4``), at the working size, after colour preservation and the mask composite, i.e. what that
frame would look like if the optimiser stopped there.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import images


def snapshot_path(output: str | os.PathLike, done: int) -> Path:
    """``OUTPUT_STEM.iter_%04d.png`` beside ``output`` for iteration ``done``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.iter_{done:04d}.png")


class SnapshotWriter:
    """Writes snapshots every ``every`` iterations (``every >= 1``) beside ``output``."""

    def __init__(self, output: str | os.PathLike, every: int):
        if every < 1:
            raise ValueError(f"--save-every must be at least 1, got {every}")
        self.output = Path(output)
        self.every = int(every)
        self.written: list[Path] = []

    def wants(self, done: int) -> bool:
        return done % self.every == 0

    def write(self, done: int, rgb: np.ndarray) -> None:
        """Write ``(H, W, 3)`` uint8 as the snapshot of iteration ``done`` (atomically)."""
        path = snapshot_path(self.output, done)
        images.save_image_atomic(rgb, path)
        self.written.append(path)
