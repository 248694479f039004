"""The work dir of a run: manifest, atomically written frames, and the journal that makes resume safe.

Layout::

    WORKDIR/manifest.json      what a resume must match (config hash, source and style fingerprints,
                               weights id, working size) and what `videostyle resume` needs (source and
                               output paths, full config, run options), package versions, frame count
    WORKDIR/journal.jsonl      one fsynced line per finished frame: {"index", "pts", "sha256"}
    WORKDIR/frames/%06d.png    stylised frames at the working resolution, 8-bit RGB
    WORKDIR/lock               ``flock``ed by the run using the dir (holds its pid): one run at a time
    WORKDIR/pass<P>/           ``--passes``: a work dir of its own per later pass (frames in processing
                               order; :class:`OrderedFrames` reads them by source index)
    WORKDIR/segments/<F>-<S>/  ``--ray``: a work dir of its own per segment (its frames indexed from the
                               segment's first; :class:`OffsetFrames` reads them by source index), with
                               ``attempts.jsonl``, one line per task attempt

This module is the only one that knows these names: everyone else asks it (:func:`pass_dir`,
:func:`segment_dir`, :func:`journaled_count`, ...). See docs/ARCHITECTURE.md for the guarantees.

A frame counts as finished only when its PNG was written to a temp name (``%06d.png.tmp``), fsynced,
renamed into place (``os.replace``), and its journal line was fsynced after that. On open, every
journaled frame's bytes are checked against its sha256; the run resumes at the first frame that is
missing, half-written or corrupt, and a journal line torn by a crash is dropped (the journal is rewritten).
Errors the user can fix (a path that cannot be a work dir, a full disk) raise ``OutputError``; a work dir
of another run raises ``ResumeError`` naming what differs.

Safety: :meth:`WorkDir.open` takes an exclusive ``flock`` on ``WORKDIR/lock`` and keeps it until
:meth:`WorkDir.close` (or the process dies: the kernel releases it, so a killed run never blocks the
next). The directory itself never moves while a run holds it: ``--restart`` moves its *contents*
aside. No write follows a symbolic link: temp files are created exclusively (``O_EXCL|O_NOFOLLOW``,
after removing a stale entry), the journal is appended with ``O_NOFOLLOW``, and a work dir whose
manifest, journal, lock or frames dir is a link is refused.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
from PIL import Image

from videostyle.errors import OutputError, ResumeError
from videostyle.faults import KillPoint, never
from videostyle.paths import write_atomic

MANIFEST = "manifest.json"
JOURNAL = "journal.jsonl"
FRAMES = "frames"
LOCK = "lock"
SEGMENTS = "segments"
ATTEMPTS = "attempts.jsonl"
PASS_PREFIX = "pass"
MANIFEST_VERSION = 1

# Manifest keys a resume must match, with the words used to tell the user what differs.
_MUST_MATCH = {
    "config_hash": "the style settings",
    "source_fingerprint": "the source video",
    "style_fingerprints": "the style images",
    "mask_fingerprint": "the mask",
    "weights_id": "the VGG-19 weights",
    "working_size": "the working size",
    "precision": "the precision",  # bf16/fp16 change pixels (a RunOptions field, recorded on its own)
    "cut": "the part of the video (--start/--duration)",  # None for the whole video, as before it existed
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


_write_atomic = write_atomic


def encode_png(rgb: np.ndarray) -> bytes:
    """``(H, W, 3)`` uint8 -> PNG bytes (deterministic for equal pixels)."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class WorkDir:
    """A run's work dir (see module docstring). Create or resume with :meth:`open`."""

    def __init__(self, path: Path, manifest: dict, entries: dict[int, JournalEntry], *,
                 lock_fd: int | None = None, fresh: bool = False, made: bool = False,
                 kill_point: KillPoint = never):
        """Not for direct use: :meth:`open` (to write) and :meth:`view` (to read) make the checks."""
        self.path = path
        self._kill_point = kill_point  # tests only: videostyle.faults
        self.manifest = manifest
        self.entries = entries
        self._lock_fd = lock_fd  # the flock'ed WORKDIR/lock (None: not held, a read-only view)
        self._fresh = fresh  # made by this open (no earlier run's frames)
        self._made = made  # the directory itself was created by this open

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, manifest: dict, *, restart: bool = False,
             kill_point: KillPoint = never) -> "WorkDir":
        """Create ``path`` with ``manifest``, or resume it when its manifest matches; either way locked
        for this process until :meth:`close` (use the work dir as a context manager).

        Raises:
            ResumeError: an existing manifest differs in config, source, weights or size (the message
                names what differs) and ``restart`` is False. With ``restart`` the old dir's contents
                are moved aside to ``<path>.old-<timestamp>``, never deleted.
            OutputError: another process holds the work dir (the message names its pid), or it cannot
                be used (a link inside it, a file system error).
        """
        path = Path(path)
        # As it reads back from JSON (tuples become lists), so comparisons see only real differences.
        manifest = json.loads(json.dumps({**manifest, "manifest_version": MANIFEST_VERSION}))
        lock_fd = None
        try:
            _refuse_links(path)
            if not (path / MANIFEST).exists() and not _is_empty_workdir(path):
                raise ResumeError(f"work dir {str(path)!r} exists and is not a videostyle work dir; "
                                  f"choose another --workdir")
            made = not path.exists()
            path.mkdir(parents=True, exist_ok=True)
            lock_fd = _lock(path)
            old = cls.read_manifest(path) if (path / MANIFEST).exists() else None
            if old is not None:
                differs = [key for key in _MUST_MATCH if _recorded(old, key) != _recorded(manifest, key)]
                if differs and not restart:
                    raise ResumeError(f"work dir {str(path)!r} belongs to another run "
                                      f"({describe_differences(old, manifest, differs)}); use --restart to "
                                      f"start over (the old dir is kept aside) or --workdir DIR")
                if restart:
                    _move_contents_aside(path)
                    old = None
            (path / FRAMES).mkdir(exist_ok=True)
            if old is None:
                (path / JOURNAL).unlink(missing_ok=True)
                _write_atomic(path / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
                _fsync_dir(path)
                return cls(path, manifest, {}, lock_fd=lock_fd, fresh=True, made=made, kill_point=kill_point)
            entries, clean = cls._read_journal(path)
            work = cls(path, old, entries, lock_fd=lock_fd, kill_point=kill_point)
            lock_fd = None  # the work dir closes it now
            work._drop_unverified(rewrite=not clean)
            return work
        except OSError as exc:
            if lock_fd is not None:
                os.close(lock_fd)
            raise OutputError(f"cannot use work dir {str(path)!r} ({_reason(exc)}); "
                              f"choose another --workdir") from exc
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise

    # -- the lock ------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the work dir (its lock); the object stays readable."""
        fd, self._lock_fd = getattr(self, "_lock_fd", None), None
        if fd is not None:
            os.close(fd)

    def __del__(self):
        try:
            self.close()  # a work dir dropped without close (an exception's path): release the lock
        except Exception:
            pass

    def __enter__(self) -> "WorkDir":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None:
                self.discard_if_unstarted()
        finally:
            self.close()

    def discard_if_unstarted(self) -> bool:
        """Undo what :meth:`open` made for a run that never journaled a frame (it failed or was stopped
        before): no manifest is left behind for a run that did not start. True when it did."""
        if not self._fresh or self._lock_fd is None or self.entries:
            return False
        try:
            if set(os.listdir(self.path)) - {MANIFEST, JOURNAL, LOCK, FRAMES} or any(
                    os.scandir(self.path / FRAMES)):
                return False  # something was made after all (a segment, a pass): keep it
            for name in (MANIFEST, JOURNAL):
                (self.path / name).unlink(missing_ok=True)
            (self.path / FRAMES).rmdir()
            (self.path / LOCK).unlink(missing_ok=True)
            if self._made:
                self.path.rmdir()
        except OSError:
            return False
        return True

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

    @classmethod
    def view(cls, path: str | os.PathLike) -> "WorkDir":
        """A work dir to read only (no lock; nothing is written), after the checks :meth:`open` makes:
        no links inside it, a readable manifest, and only the journaled frames whose bytes match their
        sha256 (the prefix ``0 .. finished_count-1``)."""
        path = Path(path)
        _refuse_links(path)
        manifest = cls.read_manifest(path)
        entries, _ = cls._read_journal(path)
        work = cls(path, manifest, entries)
        work._drop_unverified(write=False)
        return work

    def _drop_unverified(self, *, rewrite: bool = False, write: bool = True) -> None:
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
            if not write:
                return
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
            _write_atomic(self.frame_path(index), data, before_rename=lambda: self._kill_point("tmp", index))
            self._kill_point("renamed", index)
            fd = os.open(self.path / JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o644)
            with os.fdopen(fd, "a") as fh:
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
        """Record ``fields`` in the manifest (atomically); ``OutputError`` (one line) when it cannot be
        written, the old manifest then being intact."""
        self.manifest.update(fields)
        try:
            _write_atomic(self.path / MANIFEST, json.dumps(self.manifest, indent=2, sort_keys=True).encode())
        except OSError as exc:
            (self.path / (MANIFEST + ".tmp")).unlink(missing_ok=True)
            what = "disk full" if exc.errno == errno.ENOSPC else "cannot write"
            kept, shown = self.finished_count, str(self.path)
            raise OutputError(f"{what} while writing the manifest of the work dir {shown!r} ({_reason(exc)}); "
                              f"{kept} finished frame{'' if kept == 1 else 's'} kept: fix this, then run the "
                              f"same command again") from exc

    def remove(self) -> None:
        """Delete the work dir. It is renamed away first, so a run that starts meanwhile makes a new one
        instead of seeing this one half-deleted."""
        trash = self.path.with_name(f".{self.path.name}.removing-{os.getpid()}")
        try:
            os.rename(self.path, trash)
        except OSError:
            trash = self.path
        shutil.rmtree(trash, ignore_errors=True)


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
    if key == "precision":
        return f"precision {_recorded(old, key)} -> {_recorded(new, key)}"
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


def _recorded(manifest: dict, key: str):
    """``manifest[key]`` for the match test; manifests from before ``precision`` was recorded on its own
    hold it in their run options only."""
    if key == "precision" and key not in manifest:
        options = manifest.get("run_options")
        return options.get("precision", "fp32") if isinstance(options, dict) else "fp32"
    return manifest.get(key)


def _refuse_links(path: Path) -> None:
    """``OutputError`` when an entry the run writes in the work dir is a symbolic link (a write there
    would land wherever it points)."""
    for name in (MANIFEST, JOURNAL, LOCK, FRAMES):
        entry = path / name
        if entry.is_symlink():
            raise OutputError(f"work dir {str(path)!r} holds a symbolic link {name} -> {os.readlink(entry)!r}; "
                              f"expected {'a directory' if name == FRAMES else 'a regular file'}: remove the link "
                              f"(nothing is written through it)")


def _is_empty_workdir(path: Path) -> bool:
    """No path, an empty dir, or what a run killed before writing its manifest leaves (lock, frames/)."""
    if not path.exists():
        return True
    if not path.is_dir():
        return False
    extra = set(os.listdir(path)) - {LOCK, FRAMES}
    return not extra and not ((path / FRAMES).is_dir() and any(os.scandir(path / FRAMES)))


def _lock(path: Path) -> int:
    """``flock`` ``path/lock`` exclusively (it records our pid); the locked descriptor.

    Raises ``OutputError`` naming the holder's pid when another process has it. The lock file is checked
    to be still the one in ``path`` once locked: a run that finished meanwhile removes its dir.
    """
    for _ in range(10):
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f"pid {holder}" if holder.isdigit() else "a process that just started"
            raise OutputError(f"work dir {str(path)!r} is in use by another videostyle run ({who}); "
                              f"expected it free: wait for that run to finish, or use another --workdir") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            current = os.stat(path / LOCK, follow_symlinks=False)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(fd), current):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)  # the dir was removed (or replaced) while we waited: lock the one there now
        path.mkdir(parents=True, exist_ok=True)
    raise OutputError(f"work dir {str(path)!r} keeps changing while being locked; expected it to stay: "
                      f"is another program removing it?")


def _move_contents_aside(path: Path) -> Path:
    """``--restart``: move everything but the lock into ``<path>.old-<timestamp>``; the directory (and the
    lock we hold in it) stays, so no other run can be left writing into a dir pulled from under it.
    The journal goes first and the manifest last: a crash half-way leaves a dir that starts afresh."""
    aside = _aside_name(path)
    aside.mkdir()
    order = {JOURNAL: 0, MANIFEST: 2}
    for name in sorted(os.listdir(path), key=lambda n: order.get(n, 1)):
        if name != LOCK:
            os.rename(path / name, aside / name)
    _fsync_dir(aside)
    _fsync_dir(path)
    return aside


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


# -- what else lives in a work dir: the only module that spells these names ----------------------------

def journaled_count(path: str | os.PathLike) -> int:
    """Journal lines of the work dir ``path`` (not verified: for progress bars and estimates only)."""
    try:
        with open(Path(path) / JOURNAL, "rb") as fh:
            return sum(1 for line in fh if line.endswith(b"\n"))
    except OSError:
        return 0


def frames_on_disk(path: str | os.PathLike) -> int:
    """Frame files in the work dir ``path`` (0 when there is none): what a resume need not make again."""
    path = Path(path)
    return len(list((path / FRAMES).glob("*.png"))) if path.is_dir() else 0


def frames_dir(path: str | os.PathLike) -> Path | None:
    """The frames folder of the work dir ``path`` (PNG frames in index order), None when it has none."""
    folder = Path(path) / FRAMES
    return folder if folder.is_dir() else None


def has_manifest(path: str | os.PathLike) -> bool:
    """True when ``path`` is a work dir with a manifest (something a resume can start from)."""
    return (Path(path) / MANIFEST).is_file()


def segment_dir(root: str | os.PathLike, name: str) -> Path:
    """The work dir of segment ``name`` of a Ray run whose work dir is ``root``."""
    return Path(root) / SEGMENTS / name


def pass_dir(root: str | os.PathLike, p: int) -> Path:
    """The work dir of pass ``p`` (2, 3, ...) of the run whose work dir is ``root``."""
    return Path(root) / f"{PASS_PREFIX}{p}"


def pass_dirs(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(p, dir)`` of every later pass kept in the work dir ``root``, by ``p``."""
    root = Path(root)
    return sorted((int(d.name[len(PASS_PREFIX):]), d) for d in root.glob(PASS_PREFIX + "*")
                  if d.name[len(PASS_PREFIX):].isdigit())


def log_attempt(work: "WorkDir", **fields) -> None:
    """Append one JSON line to the work dir's attempts log (a Ray segment's task attempts)."""
    line = json.dumps(fields)
    fd = os.open(work.path / ATTEMPTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644)
    with os.fdopen(fd, "a") as fh:  # never through a link planted in the work dir
        fh.write(line + "\n")


class FrameStore(Protocol):
    """What the chain, the frame writer and the encoders need of stored frames, by SOURCE index:
    :class:`WorkDir` itself, :class:`OffsetFrames` (a Ray segment) or :class:`OrderedFrames` (a pass)."""

    path: Path

    @property
    def finished_count(self) -> int: ...

    @property
    def entries(self) -> dict[int, JournalEntry]: ...

    def read_frame(self, index: int) -> np.ndarray: ...


class OffsetFrames:
    """A segment's :class:`WorkDir` seen with source indices: source frame ``first + j`` is the work dir's
    frame ``j`` (what :func:`videostyle.run.chain.run_chain` writes and reads)."""

    def __init__(self, work: "WorkDir", first: int):
        self.work, self.first = work, first
        self.path = work.path

    @property
    def finished_count(self) -> int:
        return self.first + self.work.finished_count

    @property
    def entries(self) -> dict[int, JournalEntry]:
        return {self.first + j: e for j, e in self.work.entries.items()}

    @property
    def manifest(self) -> dict:
        return self.work.manifest

    def read_frame(self, index: int) -> np.ndarray:
        return self.work.read_frame(index - self.first)

    def write_frame(self, index: int, pts: int, rgb: np.ndarray) -> None:
        self.work.write_frame(index - self.first, pts, rgb)


class OrderedFrames:
    """The frames of one pass by SOURCE index, its work dir holding them in processing order.

    Args:
        work: the pass's work dir (position ``j`` holds source frame ``order[j]``).
        order: ``order[j]`` = source index of position j.
        root: the run's work dir (named in messages: that is what `videostyle resume` takes).
    """

    def __init__(self, work: "WorkDir", order: Sequence[int], root: "WorkDir"):
        self.work = work
        self.position = {t: j for j, t in enumerate(order)}
        self.path = root.path

    @property
    def finished_count(self) -> int:
        return self.work.finished_count

    @property
    def entries(self) -> dict[int, JournalEntry]:
        return {t: self.work.entries[j] for t, j in self.position.items() if j in self.work.entries}

    def read_frame(self, t: int) -> np.ndarray:
        return self.work.read_frame(self.position[t])
