"""The work dir of a run: manifest, atomically written frames, and the journal that makes resume safe.

Layout::

    WORKDIR/manifest.json      what a resume must match (config hash, source and style fingerprints,
                               weights id, working size) and what `videostyle resume` needs (source and
                               output paths, full config, run options), package versions, frame count
    WORKDIR/journal.jsonl      one fsynced line per finished frame: {"index", "pts", "sha256"}
    WORKDIR/frames/%06d.png    stylised frames at the working resolution, 8-bit RGB

A frame counts as finished only when its PNG was written to a temp name (``%06d.png.tmp``), fsynced,
renamed into place (``os.replace``), and its journal line was fsynced after that. On open, every
journaled frame's bytes are checked against its sha256; the run resumes at the first frame that is
missing, half-written or corrupt, and a journal line torn by a crash is dropped (the journal is rewritten).
Errors the user can fix (a path that cannot be a work dir, a full disk) raise ``OutputError``; a work dir
of another run raises ``ResumeError`` naming what differs.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import OutputError, ResumeError

MANIFEST = "manifest.json"
JOURNAL = "journal.jsonl"
FRAMES = "frames"
MANIFEST_VERSION = 1

# Manifest keys a resume must match, with the words used to tell the user what differs.
_MUST_MATCH = {
    "config_hash": "the style settings",
    "source_fingerprint": "the source video",
    "style_fingerprints": "the style images",
    "mask_fingerprint": "the mask",
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
        # As it reads back from JSON (tuples become lists), so comparisons see only real differences.
        manifest = json.loads(json.dumps({**manifest, "manifest_version": MANIFEST_VERSION}))
        old = cls.read_manifest(path) if (path / MANIFEST).exists() else None
        try:
            if old is not None:
                differs = [key for key in _MUST_MATCH if old.get(key) != manifest.get(key)]
                if differs and not restart:
                    raise ResumeError(f"work dir {str(path)!r} belongs to another run "
                                      f"({describe_differences(old, manifest, differs)}); use --restart to "
                                      f"start over (the old dir is kept aside) or --workdir DIR")
                if restart:
                    os.replace(path, _aside_name(path))
                    old = None
            elif path.exists() and (not path.is_dir() or any(path.iterdir())):
                raise ResumeError(f"work dir {str(path)!r} exists and is not a videostyle work dir; "
                                  f"choose another --workdir")
            (path / FRAMES).mkdir(parents=True, exist_ok=True)
            if old is None:
                _write_atomic(path / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
                (path / JOURNAL).unlink(missing_ok=True)
                _fsync_dir(path)
                return cls(path, manifest, {})
            entries, clean = cls._read_journal(path)
            work = cls(path, old, entries)
            work._drop_unverified(rewrite=not clean)
            return work
        except OSError as exc:
            raise OutputError(f"cannot use work dir {str(path)!r} ({_reason(exc)}); "
                              f"choose another --workdir") from exc

    @staticmethod
    def read_manifest(path: str | os.PathLike) -> dict:
        """The manifest of the work dir ``path``; ``ResumeError`` (one line) when there is none or it is
        unreadable."""
        file = Path(path) / MANIFEST
        if not file.is_file():
            what = "does not exist" if not Path(path).exists() else f"has no {MANIFEST}"
            raise ResumeError(f"not a videostyle work dir: {str(path)!r} {what}")
        try:
            manifest = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise ResumeError(f"cannot read {str(file)!r} ({_reason(exc)}); rerun the original "
                              f"stylize command with --restart") from exc
        if not isinstance(manifest, dict):
            raise ResumeError(f"cannot read {str(file)!r} (not a JSON object); rerun the original "
                              f"stylize command with --restart")
        return manifest

    @staticmethod
    def _read_journal(path: Path) -> tuple[dict[int, JournalEntry], bool]:
        """Journal entries by index, and whether every line was whole (``False``: rewrite it)."""
        entries: dict[int, JournalEntry] = {}
        try:
            text = (path / JOURNAL).read_text()
        except FileNotFoundError:
            return entries, True
        clean = not text or text.endswith("\n")
        for line in text.splitlines():
            try:
                data = json.loads(line)
                entry = JournalEntry(int(data["index"]), int(data["pts"]), str(data["sha256"]))
            except (ValueError, KeyError, TypeError):
                clean = False  # a line torn by a crash mid-write: that frame is simply redone
                continue
            entries[entry.index] = entry
        return entries, clean

    def _drop_unverified(self, *, rewrite: bool = False) -> None:
        """Keep the longest prefix 0..n-1 of frames whose bytes match the journal.

        The journal is rewritten (atomically) when frames were dropped or ``rewrite`` is set (a torn
        line: appending after it would glue the next entry onto it).
        """
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
        if rewrite or len(verified) != len(self.entries):
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
        entry = JournalEntry(index, int(pts), hashlib.sha256(data).hexdigest())
        try:
            _write_atomic(self.frame_path(index), data)
            with open(self.path / JOURNAL, "a") as fh:
                fh.write(json.dumps(entry.__dict__) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            self.frame_path(index).with_name(self.frame_path(index).name + ".tmp").unlink(missing_ok=True)
            what = "disk full" if exc.errno == errno.ENOSPC else "cannot write"
            kept, shown = self.finished_count, str(self.path)
            raise OutputError(f"{what} while writing frame {index} to the work dir {shown!r} "
                              f"({_reason(exc)}); {kept} finished frame{'' if kept == 1 else 's'} kept: "
                              f"fix this, then resume with `videostyle resume {shlex.quote(shown)}`") from exc
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


def describe_differences(old: dict, new: dict, keys: list[str]) -> str:
    """``"the style settings differ: style_weight 20.0 -> 5.0"``: what differs between two manifests.

    ``keys`` are :data:`_MUST_MATCH` keys whose values differ; details (old -> new) are given where the
    manifests hold what is needed to say more than the words.
    """
    words = ", ".join(_MUST_MATCH[k] for k in keys)
    verb = "differ" if len(keys) > 1 or words.endswith("s") else "differs"
    details = [d for d in (_detail(k, old, new) for k in keys) if d]
    return f"{words} {verb}" + (f": {'; '.join(details)}" if details else "")


def _detail(key: str, old: dict, new: dict) -> str | None:
    if key == "config_hash":
        a, b = old.get("config"), new.get("config")
        if not isinstance(a, dict) or not isinstance(b, dict):
            return None
        names = sorted(k for k in {*a, *b} if a.get(k) != b.get(k))
        return ", ".join(f"{k} {_short(a.get(k))} -> {_short(b.get(k))}" for k in names) or None
    if key == "source_fingerprint":
        a, b = old.get("source"), new.get("source")
        if a and b and a != b:
            return f"source {a!r} -> {b!r}"
        return "the source file's contents changed" if a and b else None
    if key == "style_fingerprints":
        return "a style image's contents changed" if old.get("config") == new.get("config") else None
    if key == "weights_id":
        return f"weights {old.get(key)} -> {new.get(key)}"
    if key == "working_size":
        a, b = old.get(key), new.get(key)
        if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) == 2:
            return f"working size {a[0]}x{a[1]} -> {b[0]}x{b[1]}"
    return None


def _short(value) -> str:
    """A config value as a user would type it: lists as comma-separated, at most 60 characters."""
    if isinstance(value, (list, tuple)):
        text = ",".join(":".join(str(v) for v in item) if isinstance(item, (list, tuple)) else str(item)
                        for item in value)
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _aside_name(path: Path) -> Path:
    """``<path>.old-<timestamp>`` (with a counter when that exists): where --restart moves a work dir."""
    base = path.with_name(f"{path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    aside, n = base, 1
    while aside.exists():
        n += 1
        aside = base.with_name(f"{base.name}-{n}")
    return aside


def _reason(exc: BaseException) -> str:
    """One-line reason of an OS or parse error."""
    text = getattr(exc, "strerror", None) or str(exc)
    return " ".join(str(text).split())
