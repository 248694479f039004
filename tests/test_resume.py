"""Interrupted runs: SIGKILL at several points, SIGTERM, `resume`, and refused resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from clips import make_clip
from PIL import Image

from videostyle.cli import main

N_FRAMES = 6


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A tiny clip, a style, and the frames of an uninterrupted run (the reference)."""
    root = tmp_path_factory.mktemp("job")
    clip = make_clip(root / "in.mp4", n_frames=N_FRAMES, fps=12)
    style = root / "style.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(style)
    reference = _run(root, clip, style, "ref")
    assert reference.returncode == 0, reference.stderr
    return root, clip, style, _frames(root / "ref.work")


def _args(root: Path, clip: Path, style: Path, name: str, *extra: str) -> list[str]:
    return ["stylize", str(clip), "--style", str(style), "-o", str(root / f"{name}.mp4"),
            "--workdir", str(root / f"{name}.work"), "--keep-workdir", "--weights", "untrained",
            "--size", "32", "--iters", "4,3", "-q", *extra]


def _run(root, clip, style, name, *extra, kill_at=None, **kwargs):
    env = {**os.environ, "VIDEOSTYLE_TEST_KILL_AT": kill_at or ""}
    return subprocess.run([sys.executable, "-m", "videostyle", *_args(root, clip, style, name, *extra)],
                          env=env, capture_output=True, text=True, timeout=300, **kwargs)


def _frames(workdir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((workdir / "frames").glob("*.png"))}


@pytest.mark.parametrize("kill_at, finished_before", [("frame:3", 3), ("journal:2", 3), ("encode", N_FRAMES)])
def test_killed_run_resumes_to_the_same_frames(job, kill_at, finished_before):
    root, clip, style, reference = job
    name = kill_at.replace(":", "_")
    killed = _run(root, clip, style, name, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL
    assert not (root / f"{name}.mp4").exists()
    assert len(_frames(root / f"{name}.work")) == finished_before  # nothing finished was lost
    again = _run(root, clip, style, name)
    assert again.returncode == 0, again.stderr
    assert _frames(root / f"{name}.work") == reference  # byte for byte equal to the uninterrupted run
    assert (root / f"{name}.mp4").stat().st_size > 0


def test_resume_command_finishes_from_the_manifest_alone(job):
    root, clip, style, reference = job
    assert _run(root, clip, style, "r", kill_at="journal:1").returncode == -signal.SIGKILL
    assert main(["resume", str(root / "r.work"), "-q"]) == 0
    assert _frames(root / "r.work") == reference
    assert (root / "r.mp4").exists()


def test_batches_are_journaled_whole_and_give_the_same_frames(job):
    root, clip, style, reference = job
    killed = _run(root, clip, style, "b", "--batch-size", "4", kill_at="frame:5")
    assert killed.returncode == -signal.SIGKILL
    assert len(_frames(root / "b.work")) == 4  # the first batch; the second never completed
    assert _run(root, clip, style, "b", "--batch-size", "4").returncode == 0
    assert _frames(root / "b.work") == reference


def test_truncated_frame_on_disk_is_redone(job):
    root, clip, style, reference = job
    assert _run(root, clip, style, "t", kill_at="encode").returncode == -signal.SIGKILL
    damaged = root / "t.work" / "frames" / "000004.png"
    damaged.write_bytes(damaged.read_bytes()[:50])
    assert _run(root, clip, style, "t").returncode == 0
    assert _frames(root / "t.work") == reference


def test_resume_with_other_settings_is_refused_and_keeps_the_work(job, capsys):
    root, clip, style, _ = job
    assert _run(root, clip, style, "c", kill_at="journal:1").returncode == -signal.SIGKILL
    before = _frames(root / "c.work")
    assert main(_args(root, clip, style, "c", "--style-weight", "5")) == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        f"videostyle: error: work dir {str(root / 'c.work')!r} belongs to another run (the style settings "
        f"differ); use --restart to start over (the old dir is kept aside) or --workdir DIR")
    assert _frames(root / "c.work") == before


def test_sigterm_stops_cleanly_and_says_how_to_resume(job):
    root, clip, style, _ = job
    proc = subprocess.Popen([sys.executable, "-m", "videostyle",
                             *_args(root, clip, style, "s", "--iters", "60,60")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = root / "s.work" / "journal.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (journal.exists() and journal.read_text().strip()):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert f"To resume: videostyle resume {root / 's.work'}" in err
    frames = _frames(root / "s.work")
    assert 1 <= len(frames) < N_FRAMES
    assert not list((root / "s.work" / "frames").glob("*.tmp"))  # nothing half-written
