"""Writing files safely: the output must be none of the inputs (one check for every command), and no
write follows a symbolic link planted at a temp name.

"The same file" is decided by the file system (``os.path.samefile``: symbolic links, hard links, ``./``
and ``../`` spellings all land on one inode), else by the resolved path when the output does not exist
yet.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

from videostyle.errors import InputError, OutputError

# Weights names that are not files (features.resolve_weights).
_NAMED_WEIGHTS = ("auto", "imagenet", "untrained")


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` are one file (or, one not existing, one resolved path)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return Path(a).resolve() == Path(b).resolve()


def style_inputs(cfg) -> list[tuple[str, str | None]]:
    """``(what, path)`` of the files a :class:`~videostyle.config.StyleConfig` reads: styles, mask, a
    weights file."""
    inputs: list[tuple[str, str | None]] = [("style image", s) for s in cfg.styles]
    inputs.append(("mask", cfg.mask))
    if cfg.weights not in _NAMED_WEIGHTS:
        inputs.append(("weights file", cfg.weights))
    return inputs


def check_not_an_input(output: str | os.PathLike, inputs: Iterable[tuple[str, str | os.PathLike | None]]) -> None:
    """``OutputError`` (one line) when ``output`` is any of ``inputs`` (``(what, path)``; None skipped)."""
    for what, path in inputs:
        if path is not None and str(path) and same_file(output, path):
            whose = "the input" if what.startswith("input") else f"the {what}"
            raise OutputError(f"output path is the {what}: {str(output)!r} (writing it would destroy {whose})")


def create_exclusive(path: str | os.PathLike) -> int:
    """A descriptor of a new file at ``path`` made here: a stale entry there (a crash's temp file, or a
    planted symbolic link) is removed first, and ``O_EXCL|O_NOFOLLOW`` never write through a link."""
    try:
        os.unlink(path)  # a link is removed itself, never its target
    except FileNotFoundError:
        pass
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)


def write_atomic(path: str | os.PathLike, data: bytes, *, tmp: str | os.PathLike | None = None,
                 before_rename: Callable[[], None] | None = None) -> None:
    """Write ``data`` to ``path`` through an exclusively created, fsynced temp file (default
    ``PATH.tmp``) and a rename: a link at ``path`` is replaced, never written through.
    ``before_rename``: called with the temp file complete (the test kill hook)."""
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else path.with_name(path.name + ".tmp")
    try:
        with os.fdopen(create_exclusive(tmp), "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def check_video_path(path: str | os.PathLike) -> Path:
    """``InputError`` (one line) when ``path`` is missing or a directory: what can be said of a video input
    without opening it (so the command line answers before anything heavy is imported)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"video file not found: {str(path)!r}")
    if path.is_dir():
        raise InputError(f"expected a video file, got a directory: {str(path)!r}")
    return path
