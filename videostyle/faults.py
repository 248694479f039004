"""TEST-ONLY fault injection: kill points, handed to the code that has them (never imported by it).

``VIDEOSTYLE_TEST_KILL_AT=POINT[:N]`` SIGKILLs the process when it reaches that point:

- ``frame:N`` once frame N is optimised, before any of it is written (as if killed mid-frame),
- ``journal:N`` right after frame N was journaled,
- ``encode`` in the middle of encoding (two frames went to the encoder, so a partial output exists),
- ``tmp:N`` / ``renamed:N`` inside :meth:`~videostyle.store.workdir.WorkDir.write_frame`,
- ``passP-frame:J`` / ``passP-journal:J`` at position J of pass P (``--passes``),
- ``segment:S:frame:N`` / ``segment:S:journal:N`` in the Ray worker of segment S
  (:mod:`videostyle.run.distributed` arms it once).

Never set it outside tests (tests/test_resume.py, tests/test_faults.py). The run layer
(:mod:`videostyle.run.api`) passes :func:`kill_point` down as the ``kill_point`` argument; library callers
get :func:`never`.
"""

from __future__ import annotations

import os
import signal
from typing import Callable, Optional, Protocol

ENV = "VIDEOSTYLE_TEST_KILL_AT"


class KillPoint(Protocol):
    def __call__(self, point: str, index: Optional[int] = None, *,
                 before_kill: Optional[Callable[[], None]] = None) -> None: ...


def kill_point(point: str, index: int | None = None, *, before_kill: Callable[[], None] | None = None) -> None:
    """SIGKILL this process when ``$VIDEOSTYLE_TEST_KILL_AT`` names ``point`` (``point:index``);
    ``before_kill`` runs first (lets frames handed to the writer land, so the test knows what is kept)."""
    wanted = os.environ.get(ENV)
    if wanted and wanted == (point if index is None else f"{point}:{index}"):
        if before_kill is not None:
            before_kill()
        os.kill(os.getpid(), signal.SIGKILL)


def never(point: str, index: int | None = None, *, before_kill: Callable[[], None] | None = None) -> None:
    """The kill point of a run outside tests: does nothing."""


def armed() -> str | None:
    """The kill point this process was started with (``$VIDEOSTYLE_TEST_KILL_AT``), None outside tests:
    what a Ray driver hands its workers, which do not share its environment."""
    return os.environ.get(ENV) or None
