"""The fault campaign of issue 14 as tests: what a hostile or careless user does, on tiny clips.

- SIGKILL at every phase of a run (``VIDEOSTYLE_TEST_KILL_AT``), each resumed, frames compared byte for byte;
- two runs on one work dir, and a ``--restart`` racing a running run (the work dir lock);
- symbolic links planted in a work dir and beside an output (nothing is written through them);
- resume drift: precision must match, another thread count is warned about;
- images too large or too thin, a full disk on resume: one line and exit 2, not an internal error;
- settings checked before anything is written, no manifest left by a run that did not start;
- a fuzz corpus of damaged videos (fixed seed): exit 0 ending on our own warning, or exit 2 with one line;
- every output-equals-input spelling for every command that writes a file.

Runs that must die are subprocesses; runs that finish are in-process (an interpreter start with torch
costs more than a whole run here), with the same torch thread count.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from common import make_clip
from common import workdir_frames as _frames
from PIL import Image

import videostyle
from videostyle.store import workdir as journal
from videostyle.cli.main import main
from videostyle.errors import OutputError
from videostyle.store.workdir import WorkDir

N_FRAMES = 6
FAST = ["--weights", "untrained", "--size", "32", "--iters", "3,2", "--content-layers", "relu2_1",
        "--style-layers", "relu1_1,relu2_1", "--flow-indices", "1,2", "-q"]
# Subprocesses import this checkout's videostyle (not whatever an editable install points at).
_ROOT = str(Path(videostyle.__file__).resolve().parents[1])


def _env(kill_at: str | None = None, threads: int | None = None) -> dict[str, str]:
    path = os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "VIDEOSTYLE_TEST_KILL_AT": kill_at or "",
            "OMP_NUM_THREADS": str(threads or torch.get_num_threads())}


def _spawn(argv: list[str], *, kill_at: str | None = None, threads: int | None = None, cwd=None):
    return subprocess.run([sys.executable, "-m", "videostyle", *argv], env=_env(kill_at, threads), cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def _style(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A tiny clip (64x48, sine track), a style, and an uninterrupted run: its frame PNGs."""
    root = tmp_path_factory.mktemp("faults")
    clip = make_clip(root / "in.mp4", n_frames=N_FRAMES, fps=12)
    style = _style(root / "style.png")
    assert main(_args(root, clip, style, "ref")) == 0
    return root, clip, style, _frames(root / "ref.work")


def _args(root: Path, clip: Path, style: Path, name: str, *extra: str) -> list[str]:
    return ["stylize", str(clip), "--style", str(style), "-o", str(root / f"{name}.mp4"),
            "--workdir", str(root / f"{name}.work"), "--keep-workdir", *FAST, *extra]


def _journaled(workdir: Path) -> int:
    return len((workdir / "journal.jsonl").read_text().splitlines())


def _err_lines(capsys) -> list[str]:
    return capsys.readouterr().err.splitlines()


def test_the_subprocesses_run_this_checkout():
    out = subprocess.run([sys.executable, "-c", "import videostyle; print(videostyle.__file__)"], env=_env(),
                         capture_output=True, text=True, timeout=60).stdout.strip()
    assert Path(out).resolve() == Path(videostyle.__file__).resolve()


# --- SIGKILL at every phase -------------------------------------------------------------------------

@pytest.mark.slow
def test_sigkill_at_every_phase_resumes_to_byte_identical_frames(job, tmp_path):
    """Killed in a frame, with a frame's temp file complete, after the rename before its journal line,
    after a journal line and mid-encode: each rerun resumes (the dead run's lock does not block), and
    `videostyle resume` ends with the uninterrupted run's frames, byte for byte."""
    root, clip, style, reference = job
    work = tmp_path / "k.work"
    argv = _args(tmp_path, clip, style, "k")
    steps = [("frame:1", {1}, None),             # frame 1 optimised, nothing of it written
             ("tmp:2", {2}, "000002.png.tmp"),  # frame 2's temp file complete, not renamed
             ("renamed:3", {3}, "000003.png"),  # frame 3 in place, not journaled
             ("journal:4", {5}, None),
             ("encode", {5, 6}, None)]          # the encoder dies on frame 2 while frame 5 is optimised
    for kill_at, journaled, left in steps:
        killed = _spawn(argv, kill_at=kill_at)
        assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stderr)
        assert _journaled(work) in journaled, kill_at
        if left:
            assert (work / "frames" / left).exists(), kill_at
        frames = _frames(work)
        assert frames == dict(list(reference.items())[:len(frames)]), kill_at  # nothing wrong kept
        assert (work / "lock").exists(), kill_at  # the dead run's lock file stays, and blocks nothing
    assert main(["resume", str(work), "-q"]) == 0
    assert _frames(work) == reference
    assert not list((work / "frames").glob("*.tmp"))


# --- the work dir lock (item 3) -----------------------------------------------------------------------

@pytest.mark.slow
def test_second_run_and_a_racing_restart_are_refused_naming_the_pid(job, tmp_path, capsys):
    root, clip, style, _ = job
    work = tmp_path / "busy.work"
    argv = _args(tmp_path, clip, style, "busy")
    slow = subprocess.Popen([sys.executable, "-m", "videostyle", *argv, "--iters", "3,100000"], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not ((work / "journal.jsonl").exists()
                                                   and (work / "journal.jsonl").read_text().strip()):
            assert slow.poll() is None, slow.communicate()
            time.sleep(0.05)
        manifest = (work / "manifest.json").read_bytes()
        busy = (f"videostyle: error: work dir {str(work)!r} is in use by another videostyle run (pid {slow.pid}); "
                f"expected it free: wait for that run to finish, or use another --workdir")
        assert main(argv) == 2
        assert _err_lines(capsys) == [busy]
        assert main([*argv, "--restart", "--style-weight", "5"]) == 2  # would move the dir aside
        assert _err_lines(capsys) == [busy]
        assert main(["resume", str(work), "-q"]) == 2
        assert _err_lines(capsys) == [busy]
        assert (work / "manifest.json").read_bytes() == manifest  # the running run's dir is untouched
        assert not list(tmp_path.glob("busy.work.old-*"))
    finally:
        slow.kill()
        slow.communicate()
    # Its lock died with it: a restart now takes the dir, and keeps the killed run's frames aside.
    assert main([*argv, "--restart"]) == 0
    aside = list(tmp_path.glob("busy.work.old-*"))
    assert len(aside) == 1 and (aside[0] / "frames" / "000000.png").exists()
    assert _journaled(work) == N_FRAMES


def test_a_work_dir_is_locked_until_closed(tmp_path):
    manifest = {"config_hash": "a", "source_fingerprint": "s", "weights_id": "w", "working_size": [4, 2]}
    first = WorkDir.open(tmp_path / "w", manifest)
    with pytest.raises(OutputError, match=f"in use by another videostyle run \\(pid {os.getpid()}\\)"):
        WorkDir.open(tmp_path / "w", manifest)
    with pytest.raises(OutputError, match="in use"):
        WorkDir.open(tmp_path / "w", {**manifest, "config_hash": "b"}, restart=True)
    first.close()
    WorkDir.open(tmp_path / "w", {**manifest, "config_hash": "b"}, restart=True).close()
    assert (tmp_path / "w" / "lock").exists() and len(list(tmp_path.glob("w.old-*"))) == 1


# --- symbolic links (item 4) ------------------------------------------------------------------------

def test_a_planted_temp_file_link_is_not_written_through(job, tmp_path):
    root, clip, style, reference = job
    work = tmp_path / "l.work"
    shutil.copytree(root / "ref.work", work)
    (work / "lock").unlink(missing_ok=True)
    decoy = tmp_path / "decoy.txt"
    decoy.write_text("precious")
    (work / "frames" / "000003.png").write_bytes(b"")  # frame 3 is redone ...
    (work / "frames" / "000003.png.tmp").symlink_to("../../decoy.txt")  # ... through this, were it followed
    assert main(_args(tmp_path, clip, style, "l")) == 0
    assert decoy.read_text() == "precious"
    assert not (work / "frames" / "000003.png").is_symlink()
    assert _frames(work) == reference


@pytest.mark.parametrize("name", ["journal.jsonl", "manifest.json", "frames", "lock"])
def test_a_linked_work_dir_entry_is_refused_in_one_line(job, tmp_path, capsys, name):
    root, clip, style, _ = job
    work = tmp_path / "j.work"
    shutil.copytree(root / "ref.work", work)
    (work / "frames" / "000005.png").write_bytes(b"")
    decoy = tmp_path / "decoy"
    shutil.move(work / name, decoy)
    before = {p.name: p.read_bytes() for p in decoy.iterdir()} if decoy.is_dir() else decoy.read_bytes()
    (work / name).symlink_to(decoy)
    assert main(_args(tmp_path, clip, style, "j")) == 2
    kind = "a directory" if name == "frames" else "a regular file"
    assert _err_lines(capsys) == [
        f"videostyle: error: work dir {str(work)!r} holds a symbolic link {name} -> {str(decoy)!r}; expected "
        f"{kind}: remove the link (nothing is written through it)"]
    after = {p.name: p.read_bytes() for p in decoy.iterdir()} if decoy.is_dir() else decoy.read_bytes()
    assert after == before


def test_a_link_planted_at_an_image_outputs_temp_name_is_not_written_through(job, tmp_path):
    root, clip, style, _ = job
    decoy = tmp_path / "decoy.txt"
    decoy.write_text("precious")
    (tmp_path / ".out.png.tmp.png").symlink_to(decoy)
    content = tmp_path / "content.png"
    Image.fromarray(np.full((24, 32, 3), 90, np.uint8)).save(content)
    assert main(["image", str(content), "--style", str(style), "-o", str(tmp_path / "out.png"), *FAST[:-5]]) == 0
    assert decoy.read_text() == "precious"
    assert not (tmp_path / "out.png").is_symlink() and Image.open(tmp_path / "out.png").size == (32, 24)


# --- resume drift (item 5) ----------------------------------------------------------------------------

def test_resume_under_another_precision_is_refused(job, tmp_path, capsys):
    root, clip, style, _ = job
    work = tmp_path / "pr.work"
    shutil.copytree(root / "ref.work", work)
    (work / "lock").unlink(missing_ok=True)
    (work / "frames" / "000005.png").write_bytes(b"")
    assert main(_args(tmp_path, clip, style, "pr", "--precision", "bf16")) == 2
    assert _err_lines(capsys) == [
        f"videostyle: error: work dir {str(work)!r} belongs to another run (the precision differs: precision "
        f"fp32 -> bf16); use --restart to start over (the old dir is kept aside) or --workdir DIR"]


@pytest.mark.slow
def test_resume_under_another_thread_count_warns_in_one_line(job, tmp_path, capsys):
    root, clip, style, reference = job
    argv = _args(tmp_path, clip, style, "t")
    threads = torch.get_num_threads()
    killed = _spawn(argv, kill_at="journal:2", threads=threads)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    machine = json.loads((tmp_path / "t.work" / "manifest.json").read_text())["machine"]
    assert machine == {"device": "cpu", "torch": torch.__version__, "threads": threads}
    other = 1 if threads != 1 else 2
    torch.set_num_threads(other)
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    assert _err_lines(capsys) == [
        f"videostyle: warning: resuming 3 frames made on another device or thread count (threads {threads} -> "
        f"{other}); the remaining frames may differ slightly from an uninterrupted run"]
    assert _frames(tmp_path / "t.work").keys() == reference.keys()


# --- one line instead of an internal error (item 6) ---------------------------------------------------

def test_disk_full_while_writing_the_manifest_on_resume(job, tmp_path, capsys, monkeypatch):
    root, clip, style, _ = job
    work = tmp_path / "f.work"
    shutil.copytree(root / "ref.work", work)
    (work / "lock").unlink(missing_ok=True)
    (work / "frames" / "000005.png").write_bytes(b"")
    manifest = (work / "manifest.json").read_bytes()

    def full(path, data, **kwargs):
        if Path(path).name == "manifest.json":
            (Path(path).parent / "manifest.json.tmp").write_bytes(data[:10])  # the write got this far
            raise OSError(28, os.strerror(28))
        return journal.write_atomic(path, data, **kwargs)
    monkeypatch.setattr(journal, "_write_atomic", full)
    assert main(["resume", str(work), "-q"]) == 2  # records the new work dir path first: disk full
    assert _err_lines(capsys) == [
        f"videostyle: error: disk full while writing the manifest of the work dir {str(work)!r} (No space left "
        f"on device); 5 finished frames kept: fix this, then run the same command again"]
    assert (work / "manifest.json").read_bytes() == manifest and not (work / "manifest.json.tmp").exists()
    assert _journaled(work) == 5


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that states ``width`` x ``height`` (its pixels are never needed: Pillow refuses at open)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("role", ["style", "mask"])
def test_an_image_too_large_to_decode_is_one_line(job, tmp_path, capsys, role):
    root, clip, style, _ = job
    big = _png_header(tmp_path / "big.png", 20000, 20000)
    limit = Image.MAX_IMAGE_PIXELS * 2
    side = int(limit ** 0.5)
    extra = ["--style", str(big)] if role == "style" else ["--style", str(style), "--mask", str(big)]
    argv = ["stylize", str(clip), "-o", str(tmp_path / "o.mp4"), *extra, *FAST]
    assert main(argv) == 2
    assert _err_lines(capsys) == [
        f"videostyle: error: image too large: {str(big)!r} has 400000000 pixels; expected at most {limit} pixels "
        f"(about {side}x{side}): scale it down"]
    assert not (tmp_path / "o.mp4.videostyle-work").exists()


@pytest.mark.parametrize("role", ["style image", "image"])
def test_an_image_too_thin_for_the_layers_is_one_line(job, tmp_path, capsys, role):
    root, clip, style, _ = job
    thin = tmp_path / "thin.png"
    Image.fromarray(np.full((2, 100000, 3), 128, np.uint8)).save(thin)
    content = tmp_path / "content.png"
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(content)
    content, style = (content, thin) if role == "style image" else (thin, style)
    assert main(["image", str(content), "--style", str(style), "-o", str(tmp_path / "o.png"), "--weights",
                 "untrained", "--size", "32", "--iters", "1", "-q"]) == 2
    assert _err_lines(capsys) == [
        f"videostyle: error: {role} {str(thin)!r} is 100000x2 px, scaled to 32x2 px: too thin for layer "
        f"relu5_1, which needs a short edge of at least 16 px; expected an image at most 2 times as long as it "
        f"is wide"]
    assert not (tmp_path / "o.png").exists()


# --- settings checked before anything is written (item 7) --------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--flow", "rafft"], "--flow must be one of dis, farneback, raft-small, raft-large; got 'rafft'"),
    (["--preset", "fastest"], "--preset must be one of ultrafast, superfast, veryfast, faster, fast, medium, "
                              "slow, slower, veryslow, placebo; got 'fastest'"),
    (["--crf", "99"], "--crf must be between 0 and 51, got 99"),
    (["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N; got 'tpu'"),
])
@pytest.mark.slow
def test_a_bad_setting_is_refused_before_a_work_dir_exists(job, tmp_path, capsys, flags, message):
    root, clip, style, reference = job
    assert main(_args(tmp_path, clip, style, "v", *flags)) == 2
    assert _err_lines(capsys) == [f"videostyle: error: {message}"]
    assert not (tmp_path / "v.work").exists()
    assert main(_args(tmp_path, clip, style, "v")) == 0  # the corrected command is not refused
    assert _frames(tmp_path / "v.work") == reference


def test_a_run_stopped_before_its_first_frame_leaves_no_manifest(job, tmp_path, capsys, monkeypatch):
    from videostyle.run import chain
    root, clip, style, _ = job

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(chain, "run_chain", stopped)
    assert main(_args(tmp_path, clip, style, "s")) == 130
    assert _err_lines(capsys)[-1] == (
        "videostyle: interrupted before any work was saved; run the same command again to start")
    assert not (tmp_path / "s.work").exists()


# --- damaged input: a fuzz corpus (items 6, 8) ---------------------------------------------------------

def _corpus(root: Path) -> dict[str, Path]:
    """At least 20 damaged copies of a tiny clip, from a fixed seed: bit flips in the picture data,
    truncations (index last and index first), zeroed boxes and zeroed byte runs."""
    rng = np.random.default_rng(14)
    plain = make_clip(root / "plain.mp4", n_frames=6, fps=12).read_bytes()
    faststart = make_clip(root / "fast.mp4", n_frames=6, fps=12, faststart=True).read_bytes()
    mkv = make_clip(root / "plain.mkv", n_frames=6, fps=12).read_bytes()
    out: dict[str, bytes] = {}
    mdat = plain.find(b"mdat") + 4
    moov = plain.find(b"moov")
    for k in range(8):
        flips = 3 if k < 5 else 40
        data = bytearray(plain)
        for pos in rng.integers(mdat, moov - 8, flips):
            data[int(pos)] ^= 1 << int(rng.integers(0, 8))
        out[f"flip{k}.mp4"] = bytes(data)
    for keep in (0.3, 0.6, 0.9):
        out[f"cut{keep}.mp4"] = plain[: int(len(plain) * keep)]
        out[f"cut{keep}-faststart.mp4"] = faststart[: int(len(faststart) * keep)]
        out[f"cut{keep}.mkv"] = mkv[: int(len(mkv) * keep)]
    for box in (b"stsz", b"stco", b"avcC", b"stss"):
        at = plain.find(box)
        size = struct.unpack(">I", plain[at - 4: at])[0]
        out[f"zero-{box.decode()}.mp4"] = plain[: at + 4] + bytes(size - 8) + plain[at + size - 4:]
    for k in range(3):
        at = int(rng.integers(mdat, moov - 256))
        out[f"zero-run{k}.mp4"] = plain[:at] + bytes(200) + plain[at + 200:]
    data = bytearray(mkv)
    for pos in rng.integers(len(mkv) // 3, len(mkv), 20):
        data[int(pos)] ^= 0xFF
    out["flip.mkv"] = bytes(data)
    paths = {}
    for name, data in out.items():
        (root / name).write_bytes(data)
        paths[name] = root / name
    return paths


# Runs each case through the CLI in one interpreter (torch is imported once), stderr (fd 2, so FFmpeg's
# own output too) captured per case; one JSON line per case lets the parent bound each case's time.
_RUNNER = r"""
import json, os, sys, tempfile
from videostyle.cli.main import main
style, outdir, cases = sys.argv[1], sys.argv[2], sys.argv[3:]
for case in cases:
    name = os.path.basename(case)
    with tempfile.TemporaryFile() as err:
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        try:
            rc = main(["stylize", case, "--style", style, "-o", os.path.join(outdir, name + ".out.mp4"),
                       "--weights", "untrained", "--size", "32", "--iters", "1", "--content-layers", "relu1_1",
                       "--style-layers", "relu1_1", "--preset", "ultrafast", "-q"])
        except SystemExit as exc:
            rc = exc.code
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        print(json.dumps({"case": name, "rc": rc, "err": err.read().decode(errors="replace")}), flush=True)
"""
_CASE_TIMEOUT_S = 120


@pytest.mark.slow
def test_fuzzed_videos_end_in_a_warning_or_one_line_never_a_traceback(job, tmp_path):
    root, clip, style, _ = job
    corpus = _corpus(tmp_path)
    assert len(corpus) >= 20
    proc = subprocess.Popen([sys.executable, "-c", _RUNNER, str(style), str(tmp_path), *map(str, corpus.values())],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {}
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    try:
        for _ in corpus:
            if not selector.select(timeout=_CASE_TIMEOUT_S):  # a hang: the bound is per case
                pytest.fail(f"no result within {_CASE_TIMEOUT_S} s after {sorted(results)}")
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            result = json.loads(line)
            results[result["case"]] = result
    finally:
        proc.kill()
        proc.communicate()
    warned = 0
    for name, result in sorted(results.items()):
        lines = result["err"].splitlines()
        assert "Traceback" not in result["err"], (name, result["err"])
        if result["rc"] == 2:
            assert len(lines) == 1 and lines[0].startswith("videostyle: error: "), (name, lines)
        else:
            assert result["rc"] == 0, (name, result)
            # Only our own lines (FFmpeg's raw ones are summarised), and the last is a damage warning.
            assert all(line.startswith("videostyle: warning: ") for line in lines), (name, lines)
            if lines:
                warned += 1
                assert "damaged" in lines[-1] or "FFmpeg reported" in lines[-1], (name, lines)
            assert (tmp_path / f"{name}.out.mp4").exists()
    assert warned >= 5  # the corpus does hit the damage paths
    assert sum(r["rc"] == 2 for r in results.values()) >= 3


# --- output equal to an input, for every command (item 2) -----------------------------------------------

def _spellings(tmp_path: Path, target: Path) -> dict[str, str]:
    """Ways to name ``target`` (in ``tmp_path``, the cwd): itself, ./, ../, a symlink, a hard link."""
    link, hard = tmp_path / f"link{target.suffix}", tmp_path / f"hard{target.suffix}"
    for p in (link, hard):
        p.unlink(missing_ok=True)
    link.symlink_to(target)
    os.link(target, hard)
    return {"same": str(target), "dot": f"./{target.name}", "dotdot": f"../{tmp_path.name}/{target.name}",
            "symlink": str(link), "hardlink": str(hard)}


def _command(command: str, paths: dict[str, Path], out: str) -> list[str]:
    fast = ["--weights", "untrained", "--size", "32", "--iters", "1", "-q"]
    style = f"{paths['style']},{paths['style2']}"
    if command == "image":
        return ["image", str(paths["image"]), "--style", style, "--mask", str(paths["mask"]), "-o", out, *fast]
    if command in ("preview", "sheet"):
        return [command, str(paths["video"]), "--style", style, "--mask", str(paths["mask"]), "-o", out, *fast]
    if command == "stylize":
        return ["stylize", str(paths["video"]), "--style", style, "--mask", str(paths["mask"]), "-o", out, *fast]
    if command == "webcam":
        return ["webcam", "-o", out, "--style", style, "--mask", str(paths["mask"]), "--device", "/dev/nonexistent",
                "--weights", "untrained", "-q"]
    return ["evaluate", str(paths["stylised"]), "--source", str(paths["video"]), "--style", style, "--weights",
            "untrained", "--plot", out]


# (command, role): which input the output names; the role's file gets the extension the command writes.
_CASES = [("image", "image"), ("image", "style"), ("image", "style2"), ("image", "mask"),
          ("preview", "video"), ("preview", "style"), ("preview", "mask"),
          ("sheet", "video"), ("sheet", "style2"), ("sheet", "mask"),
          ("stylize", "video"), ("stylize", "style"), ("stylize", "mask"),
          ("webcam", "style"), ("webcam", "mask"),
          ("evaluate", "stylised"), ("evaluate", "video"), ("evaluate", "style")]
_WHAT = {"image": "input image", "style": "style image", "style2": "style image", "mask": "mask",
         "video": "input video", "stylised": "stylised video"}


@pytest.mark.parametrize("command, role", _CASES)
def test_every_command_refuses_an_output_that_is_an_input(tmp_path, capsys, monkeypatch, command, role):
    video_ext = command in ("stylize", "webcam")  # these write videos: the input named must look like one
    ext = ".mkv" if video_ext else ".png"
    grey = np.full((24, 32, 3), 100, np.uint8)
    paths = {"video": make_clip(tmp_path / "in.mp4", n_frames=2), "stylised": make_clip(tmp_path / "st.mp4", n_frames=2)}
    for name in ("image", "style", "style2", "mask"):
        path = tmp_path / f"{name}{ext if name == role else '.png'}"
        Image.fromarray(grey).save(path, format="PNG")  # PNG bytes whatever the extension
        paths[name] = path
    target = paths[role]
    before = target.read_bytes()
    monkeypatch.chdir(tmp_path)
    what = "source video" if (command, role) == ("evaluate", "video") else _WHAT[role]
    whose = "the input" if what.startswith("input") else f"the {what}"
    for spelling, out in _spellings(tmp_path, target).items():
        assert main(_command(command, paths, out)) == 2, spelling
        assert _err_lines(capsys) == [
            f"videostyle: error: output path is the {what}: {str(Path(out))!r} (writing it would destroy "
            f"{whose})"], spelling
        assert target.read_bytes() == before, spelling
    assert not list(tmp_path.glob("*.videostyle-work")) and not list(tmp_path.glob("*.raw*.mkv"))


@pytest.mark.parametrize("command", ["image", "stylize"])
def test_save_every_refuses_a_snapshot_name_that_is_an_input(job, tmp_path, capsys, command):
    root, clip, style, _ = job
    snapshot_named = tmp_path / "out.iter_0002.png"  # what --save-every 2 writes for -o out.*
    shutil.copy(style, snapshot_named)
    before = snapshot_named.read_bytes()
    content = tmp_path / "content.png"
    Image.fromarray(np.full((24, 32, 3), 90, np.uint8)).save(content)
    source, out = (content, "out.png") if command == "image" else (clip, "out.mp4")
    assert main([command, str(source), "--style", str(snapshot_named), "-o", str(tmp_path / out), "--save-every",
                 "2", *FAST[:6], "-q"]) == 2
    assert _err_lines(capsys) == [
        f"videostyle: error: --save-every 2 would write {str(snapshot_named)!r}, the style image; expected "
        f"snapshot names that are no input: choose another -o"]
    assert snapshot_named.read_bytes() == before
