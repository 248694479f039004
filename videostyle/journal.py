"""The work dir of a run: manifest, atomically written frames, and the journal that makes resume safe.

Layout::

    WORKDIR/manifest.json      config hash, config, source fingerprint, weights id, versions, sizes
    WORKDIR/journal.jsonl      one fsynced line per finished frame: {"index", "pts", "sha256"}
    WORKDIR/frames/%06d.png    stylised frames at the working resolution, 8-bit RGB

A frame counts as finished only when its PNG was written to a temp name, fsynced, renamed into place
(``os.replace``), and its journal line was fsynced after that. On open, every journaled frame's bytes
are checked against its sha256; the run resumes at the first frame that is missing or corrupt.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import ResumeError

MANIFEST = "manifest.json"
JOURNAL = "journal.jsonl"
FRAMES = "frames"
MANIFEST_VERSION = 1

# Manifest keys a resume must match, with the words used to tell the user what differs.
_MUST_MATCH = {
    "config_hash": "the style settings",
    "source_fingerprint": "the source video",
    "weights_id": "the VGG-19 weights",
    "working_size": "the working size",
}


@dataclass(frozen=True)
class JournalEntry:
    index: int
    pts: int
    sha256: str


def file_fingerprint(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """Cheap, content-based fingerprint of a (possibly huge) file: size + sha256 of its first and last MiB."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(chunk))
        if size > chunk:
            fh.seek(max(chunk, size - chunk))
            digest.update(fh.read(chunk))
    return f"{size}:{digest.hexdigest()[:32]}"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not supported on every platform/filesystem
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def encode_png(rgb: np.ndarray) -> bytes:
    """``(H, W, 3)`` uint8 -> PNG bytes (deterministic for equal pixels)."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class WorkDir:
    """A run's work dir (see module docstring). Create or resume with :meth:`open`."""

    def __init__(self, path: Path, manifest: dict, entries: dict[int, JournalEntry]):
        self.path = path
        self.manifest = manifest
        self.entries = entries

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, manifest: dict, *, restart: bool = False) -> "WorkDir":
        """Create ``path`` with ``manifest``, or resume it when its manifest matches.

        Raises:
            ResumeError: an existing manifest differs in config, source, weights or size (the message
                names what differs) and ``restart`` is False. With ``restart`` the old dir is moved
                aside to ``<path>.old-<timestamp>``, never deleted.
        """
        path = Path(path)
        manifest = {**manifest, "manifest_version": MANIFEST_VERSION}
        old = cls.read_manifest(path) if (path / MANIFEST).exists() else None
        if old is not None:
            differs = [words for key, words in _MUST_MATCH.items() if old.get(key) != manifest.get(key)]
            if differs and not restart:
                raise ResumeError(
                    f"work dir {str(path)!r} belongs to another run ({', '.join(differs)} differ); "
                    f"use --restart to start over (the old dir is kept aside) or --workdir DIR")
            if restart:
                aside = path.with_name(f"{path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
                os.replace(path, aside)
                old = None
        elif path.exists() and any(path.iterdir()):
            raise ResumeError(f"work dir {str(path)!r} exists and is not a videostyle work dir; "
                              f"choose another --workdir")
        (path / FRAMES).mkdir(parents=True, exist_ok=True)
        if old is None:
            _write_atomic(path / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
            (path / JOURNAL).unlink(missing_ok=True)
            _fsync_dir(path)
            return cls(path, manifest, {})
        work = cls(path, old, cls._read_journal(path))
        work._drop_unverified()
        return work

    @staticmethod
    def read_manifest(path: str | os.PathLike) -> dict:
        try:
            return json.loads((Path(path) / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise ResumeError(f"cannot read {str(Path(path) / MANIFEST)!r}: {exc}") from exc

    @staticmethod
    def _read_journal(path: Path) -> dict[int, JournalEntry]:
        entries: dict[int, JournalEntry] = {}
        try:
            lines = (path / JOURNAL).read_text().splitlines()
        except FileNotFoundError:
            return entries
        for line in lines:
            try:
                data = json.loads(line)
                entry = JournalEntry(int(data["index"]), int(data["pts"]), str(data["sha256"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a crash mid-write: that frame is simply redone
            entries[entry.index] = entry
        return entries

    def _drop_unverified(self) -> None:
        """Keep the longest prefix 0..n-1 of frames whose bytes match the journal; rewrite the journal."""
        verified: dict[int, JournalEntry] = {}
        index = 0
        while index in self.entries:
            entry = self.entries[index]
            try:
                data = self.frame_path(index).read_bytes()
            except OSError:
                break
            if hashlib.sha256(data).hexdigest() != entry.sha256:
                break
            verified[index] = entry
            index += 1
        if len(verified) != len(self.entries):
            self.entries = verified
            text = "".join(json.dumps(e.__dict__) + "\n" for e in verified.values())
            _write_atomic(self.path / JOURNAL, text.encode())

    # -- frames --------------------------------------------------------------------------------
    def frame_path(self, index: int) -> Path:
        return self.path / FRAMES / f"{index:06d}.png"

    @property
    def finished_count(self) -> int:
        """Number of finished frames; they are exactly indices ``0 .. finished_count-1``."""
        return len(self.entries)

    def write_frame(self, index: int, pts: int, rgb: np.ndarray) -> None:
        """Atomically store frame ``index`` ``(H, W, 3)`` uint8, then journal it (both fsynced)."""
        if index != self.finished_count:
            raise ValueError(f"frames are journaled in order: expected {self.finished_count}, got {index}")
        data = encode_png(rgb)
        _write_atomic(self.frame_path(index), data)
        entry = JournalEntry(index, int(pts), hashlib.sha256(data).hexdigest())
        with open(self.path / JOURNAL, "a") as fh:
            fh.write(json.dumps(entry.__dict__) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.entries[index] = entry

    def read_frame(self, index: int) -> np.ndarray:
        """The saved 8-bit frame ``(H, W, 3)`` uint8: what the warm start and the encoder use."""
        with Image.open(self.frame_path(index)) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()

    def update_manifest(self, **fields) -> None:
        self.manifest.update(fields)
        _write_atomic(self.path / MANIFEST, json.dumps(self.manifest, indent=2, sort_keys=True).encode())

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
