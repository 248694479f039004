"""``--save-every N``: the first frame's image every N optimiser iterations, for tuning settings.

Files go beside the output as ``OUTPUT_STEM.iter_%04d.png`` (e.g. ``clip.iter_0050.png`` for
``-o clip.mp4``), at the working size, after colour preservation and the mask composite, i.e. what that
frame would look like if the optimiser stopped there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

import numpy as np

from videostyle import images
from videostyle.errors import OutputError
from videostyle.paths import same_file


def snapshot_path(output: str | os.PathLike, done: int) -> Path:
    """``OUTPUT_STEM.iter_%04d.png`` beside ``output`` for iteration ``done``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.iter_{done:04d}.png")


def check_snapshots_not_inputs(output: str | os.PathLike, every: int,
                               inputs: Iterable[tuple[str, str | os.PathLike | None]]) -> None:
    """``OutputError`` (one line) when a snapshot ``--save-every`` may write is one of ``inputs``
    (``(what, path)``): an input named ``OUTPUT_STEM.iter_NNNN.png`` beside the output, NNNN a multiple
    of ``every`` (by its own name or, a link, its target's)."""
    if every <= 0:
        return
    output = Path(output)
    pattern = re.compile(re.escape(output.stem) + r"\.iter_(\d{4,})\.png")
    for what, path in inputs:
        if not path:
            continue
        for candidate in {Path(path), Path(path).resolve()}:
            found = pattern.fullmatch(candidate.name)
            if found and int(found.group(1)) % every == 0 and same_file(candidate.parent, output.parent):
                raise OutputError(f"--save-every {every} would write {str(snapshot_path(output, int(found.group(1))))!r}, "
                                  f"the {what}; expected snapshot names that are no input: choose another -o")


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
