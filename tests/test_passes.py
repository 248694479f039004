"""Multi-pass video (--passes): lower temporal error than one pass, and kill/resume safety per pass.

The resume invariant is test_resume.py's: a run killed (SIGKILL, ``VIDEOSTYLE_TEST_KILL_AT``) and run
again ends with frame PNGs byte-for-byte equal to an uninterrupted run's, in every pass, and finished
frames of finished passes are not redone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from common import make_clip
from common import workdir_frames as _frames
from common import decoded_rgb as _decoded
from PIL import Image

from videostyle.tools import evaluate
from videostyle import images
from videostyle.cli.main import main
from videostyle.run.passes import pass_order

N_FRAMES = 6
# The loss balance these tests were measured with on untrained weights (the defaults are now chosen on
# trained features, where a style weight of 1 suits; untrained features need more to stylise visibly).
UNTRAINED_BALANCE = ["--style-weight", "20", "--tv-weight", "0"]
FAST = ["--weights", "untrained", "--size", "32", "--iters", "3,2", "--content-layers", "relu2_1",
        "--style-layers", "relu1_1,relu2_1", *UNTRAINED_BALANCE, "-q"]


def _style(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def test_pass_order_alternates_backward_and_forward():
    assert pass_order(4, 1) == [0, 1, 2, 3]
    assert pass_order(4, 2) == [3, 2, 1, 0]
    assert pass_order(4, 3) == [0, 1, 2, 3]


def _mean_error(stylised: Path, source: Path, capsys) -> float:
    """The clip-level temporal error that `videostyle evaluate` prints ("mean temporal error: E ...")."""
    capsys.readouterr()
    assert main(["evaluate", str(stylised), "--source", str(source)]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("mean temporal error: "))
    return float(line.split()[3])


@pytest.mark.slow
def test_more_passes_lower_the_temporal_error(tmp_path, capsys):
    """The moving-square clip (tests/common.py: square moving 4 px/frame, background brightening each frame),
    the same iterations per frame in every pass. The new-content term is off: it is another lever on
    the same error (here it lowered pass 1's by 15%, to 0.00100, and pass 2 ended at 0.00087 with it,
    0.00080 without), and this test is about the passes. Pass 1 of a 2-pass run is the 1-pass result (kept in
    WORKDIR/frames), so one run gives both."""
    clip = make_clip(tmp_path / "in.mp4", n_frames=N_FRAMES, fps=12)
    style = _style(tmp_path / "style.png")
    work = tmp_path / "p2.work"
    assert main(["stylize", str(clip), "--style", str(style), "-o", str(tmp_path / "p2.mp4"), "--workdir", str(work),
                 "--keep-workdir", "--output-size", "working", "--weights", "untrained", "--size", "64",
                 "--iters", "10,5", "--passes", "2", "--content-layers", "relu3_1", "--style-layers",
                 "relu1_1,relu2_1,relu3_1", *UNTRAINED_BALANCE, "--new-content-style", "0", "-q"]) == 0
    one_pass = _mean_error(work / "frames", clip, capsys)
    two_passes = _mean_error(work, clip, capsys)  # evaluate reads a multi-pass work dir's last pass
    assert two_passes < 0.8 * one_pass, (one_pass, two_passes)
    # ... in source order (the backward pass stored the last frame first)
    last = [images.load_image(p) for p in sorted((work / "pass2" / "frames").glob("*.png"))]
    assert all(np.array_equal(a, b) for a, b in zip(evaluate.read_frames(work), last[::-1], strict=True))


def _spawn(argv: list[str], *, kill_at: str, cwd: Path):
    env = {**os.environ, "VIDEOSTYLE_TEST_KILL_AT": kill_at, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.run([sys.executable, "-m", "videostyle", *argv], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_killed_multi_pass_run_resumes_to_the_same_frames(tmp_path, monkeypatch):
    """Three passes with colour preservation and a mask (all of what a resume must restore), killed after
    pass 2's third frame was journaled, then mid-way through pass 3's second frame."""
    clip = make_clip(tmp_path / "in.mp4", n_frames=N_FRAMES, fps=12)
    style = _style(tmp_path / "style.png")
    mask = np.zeros((48, 64), np.uint8)
    mask[:, 20:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")

    def argv(name: str) -> list[str]:
        return ["stylize", clip.name, "--style", style.name, "-o", f"{name}.mp4", "--workdir", f"{name}.work",
                "--keep-workdir", "--passes", "3", "--preserve-colors", "--mask", "mask.png", *FAST]

    monkeypatch.chdir(tmp_path)  # relative paths, as a user types them
    assert main(argv("ref")) == 0
    ref = {d: _frames(tmp_path / "ref.work" / d) for d in (".", "pass2", "pass3")}
    assert all(len(frames) == N_FRAMES for frames in ref.values())
    assert ref["pass2"] != ref["pass3"] != ref["."]

    work = tmp_path / "k.work"
    killed = _spawn(argv("k"), kill_at="pass2-journal:2", cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert _frames(work) == ref["."]
    assert _frames(work / "pass2") == dict(list(ref["pass2"].items())[:3])
    assert not (work / "pass3").exists()
    stamps = {p.name: p.stat().st_mtime_ns for p in (work / "frames").iterdir()}

    killed = _spawn(argv("k"), kill_at="pass3-frame:1", cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert _frames(work / "pass2") == ref["pass2"]
    assert _frames(work / "pass3") == dict(list(ref["pass3"].items())[:1])

    assert main(argv("k")) == 0
    assert {d: _frames(work / d) for d in (".", "pass2", "pass3")} == ref
    assert {p.name: p.stat().st_mtime_ns for p in (work / "frames").iterdir()} == stamps  # pass 1 not redone
    # The video holds the last pass (pass 3 runs forward: position t is frame t). Not compared bit for bit
    # with ref.mp4: two libx264 encodes of byte-identical frames differ here now and then (test_resume.py's
    # output comparisons fail the same way at this commit).
    for t, decoded in enumerate(_decoded(tmp_path / "k.mp4")):
        error = {d: np.abs(decoded.astype(int) - images.resize_rgb(
            images.load_image(work / d / "frames" / f"{t:06d}.png"), (64, 48))).mean() for d in (".", "pass3")}
        assert error["pass3"] < 0.5 * error["."], (t, error)


@pytest.mark.parametrize("flag,value", [("--passes", "0"), ("--pass-blend", "-1")])
def test_bad_pass_settings_give_one_line(tmp_path, capsys, flag, value):
    clip = make_clip(tmp_path / "in.mp4", n_frames=2, fps=12)
    style = _style(tmp_path / "style.png")
    assert main(["stylize", str(clip), "--style", str(style), "-o", str(tmp_path / "o.mp4"), flag, value,
                 *FAST]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"videostyle: error: {flag} must be")
