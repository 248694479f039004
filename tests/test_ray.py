"""`--ray`: segments as Ray tasks on a local Ray, against the single-process run.

The pure parts (segment plan, cross-fade, seam pairs, seeking) are tested without Ray. The first Ray
run starts its own local Ray (as the command does on a workstation; one worker per CPU); the later ones
share one local Ray instance with 2 CPUs (started once: ~3 s). The clip has 12 frames, cut into two
segments (5 frames, then 7 after a run-in of 2 that is cross-faded), and a shallow VGG: each run takes
seconds.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from common import make_clip
from common import decoded_seconds_and_rgb as _decoded
from PIL import Image

from videostyle.cli.main import main
from videostyle.run.distributed import SeamMeter, Segment, crossfade, plan_segments, seam_pairs, seek_point
from videostyle.motion.scenes import detect_scene_cuts, frame_changes
from videostyle.media.decode import iter_frames, keyframes
from videostyle.media.probe import probe_video

N_FRAMES = 12
FAST = ["--weights", "untrained", "--size", "64", "--iters", "4,2", "--content-layers", "relu2_1",
        "--style-layers", "relu1_1,relu2_1"]
SEGMENTS = ["--segment-frames", "5", "--segment-overlap", "2"]


# --- pure ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("count,length,overlap", [(12, 5, 2), (1000, 300, 10), (601, 300, 10), (610, 300, 10),
                                                  (611, 300, 10), (50, 7, 0), (40, 4, 4)])
def test_segments_own_every_frame_once_and_run_in_over_the_previous_one(count, length, overlap):
    segs = plan_segments(count, length=length, overlap=overlap)
    owned = [range(s.start, count if s.stop is None else s.stop) for s in segs]
    assert [f for r in owned for f in r] == list(range(count))  # each frame owned once, in order
    assert segs[-1].stop is None and all(s.stop is not None for s in segs[:-1])  # the last takes any extra
    assert [s.index for s in segs] == list(range(len(segs)))
    assert segs[0].first == 0 and all(s.first == s.start - overlap for s in segs[1:])
    assert all(len(r) >= length for r in owned[:-1]) and len(owned[-1]) > overlap  # no tail worth less than its run-in
    assert len({s.name for s in segs}) == len(segs)


def test_segment_plan_edge_cases():
    assert plan_segments(None, length=5, overlap=2) == [Segment(0, 0, 0, None)]  # unknown count: one segment
    assert plan_segments(7, length=5, overlap=2) == [Segment(0, 0, 0, None)]  # too short to be worth a seam
    assert plan_segments(12, length=5, overlap=2) == [Segment(0, 0, 0, 5), Segment(1, 3, 5, None)]
    for length, overlap in ((0, 0), (5, -1), (5, 6)):
        with pytest.raises(ValueError, match="--segment-"):
            plan_segments(100, length=length, overlap=overlap)


def test_crossfade_ramps_from_the_old_segment_to_the_new():
    old, new = np.full((2, 2, 3), 0, np.uint8), np.full((2, 2, 3), 240, np.uint8)
    values = [int(crossfade(old, new, position=j, overlap=3)[0, 0, 0]) for j in range(3)]
    assert values == [60, 120, 180]  # steps of (new-old)/(K+1): the jump is spread over K+1 steps
    same = np.random.default_rng(0).integers(0, 255, (4, 5, 3), dtype=np.uint8)
    assert np.array_equal(crossfade(same, same, position=1, overlap=4), same)


def test_seam_pairs_are_the_steps_into_through_and_out_of_each_cross_fade():
    segs = plan_segments(40, length=10, overlap=3)
    seams, inside = seam_pairs(segs, 40)
    assert seams == {t: i for i in (1, 2, 3) for t in range(10 * i - 3, 10 * i + 1)}
    assert inside and not inside & set(seams) and all(1 <= t < 40 for t in inside)
    assert all(t - 1 not in range(s.first, s.start) for t in inside for s in segs[1:])  # never a blended frame


@pytest.mark.parametrize("size", [(64, 48), (128, 96)])
def test_scene_cut_is_found_at_the_frame_where_the_shot_changes(tmp_path, size):
    clip = make_clip(tmp_path / "cut.mp4", size=size, n_frames=16, cut_at=7, audio=None)
    assert detect_scene_cuts(probe_video(clip)) == [7]


def test_smooth_motion_and_a_brightness_step_are_not_scene_cuts(tmp_path):
    """The moving square warps (flow check passes); the grey background crossing a histogram bin changes
    the histogram a lot (frame 4) but warps: a cut needs both signals."""
    info = probe_video(make_clip(tmp_path / "smooth.mp4", size=(128, 96), n_frames=16, audio=None))
    changes = {t: (reliable, hist) for t, reliable, hist in frame_changes(info)}
    assert sorted(changes) == list(range(1, 16))
    assert changes[4][1] > 0.5 and changes[4][0] > 0.5  # the histogram alone would call it a cut
    assert detect_scene_cuts(info) == []


@pytest.mark.parametrize("count,length,overlap,cuts", [(100, 10, 3, [25]), (100, 10, 3, [12, 13, 50, 99]),
                                                       (100, 10, 3, [1, 21, 22]), (40, 10, 10, [11, 35]),
                                                       (100, 30, 5, [31, 62, 93]), (12, 5, 2, [0, 12, 40])])
def test_segments_start_at_every_cut_without_run_in_and_never_fold_across_one(count, length, overlap, cuts):
    segs = plan_segments(count, length=length, overlap=overlap, cuts=cuts)
    owned = [range(s.start, count if s.stop is None else s.stop) for s in segs]
    assert [f for r in owned for f in r] == list(range(count))  # each frame owned once, in order
    assert [s.index for s in segs] == list(range(len(segs))) and segs[-1].stop is None
    inner = [c for c in cuts if 0 < c < count]  # a cut at 0 or past the end is no cut
    assert [s.start for s in segs if s.cut] == inner
    assert all(s.first == s.start for s in segs if s.cut)  # no run-in at a cut
    assert all(s.first == s.start - overlap for s in segs[1:] if not s.cut)  # the usual run-in elsewhere
    assert not any(s.first < c < s.start or s.start < c < (count if s.stop is None else s.stop)
                   for s in segs for c in inner)  # no segment stylises or owns across a cut
    scene_end = {s.index: min([c for c in inner if c > s.start] + [count]) for s in segs}
    for s, r in zip(segs, owned):  # a segment is at most its length, plus a folded tail, within its scene
        assert len(r) <= length + overlap
        if r.stop != scene_end[s.index]:
            assert len(r) == length
    assert len({s.name for s in segs}) == len(segs)


def test_segment_plan_with_cuts_examples():
    assert plan_segments(30, length=10, overlap=2, cuts=[11]) == [
        Segment(0, 0, 0, 11), Segment(1, 11, 11, 21, cut=True), Segment(2, 19, 21, None)]
    # Scene 0..11 has a 1-frame tail (<= overlap): folded into its segment, but the cut still starts one.
    assert plan_segments(30, length=10, overlap=2, cuts=[11, 20]) == [
        Segment(0, 0, 0, 11), Segment(1, 11, 11, 20, cut=True), Segment(2, 20, 20, None, cut=True)]
    assert plan_segments(7, length=5, overlap=2, cuts=[3]) == [Segment(0, 0, 0, 3), Segment(1, 3, 3, None, cut=True)]
    assert plan_segments(None, length=5, overlap=2, cuts=[3]) == [Segment(0, 0, 0, None)]


def test_seam_pairs_and_the_seam_metric_skip_pairs_across_a_cut():
    segs = plan_segments(40, length=10, overlap=3, cuts=[20])  # seams at 10 and 30, a cut at 20
    seams, inside = seam_pairs(segs, 40)
    assert [s.cut for s in segs] == [False, False, True, False]
    assert seams == {**{t: 1 for t in range(7, 11)}, **{t: 3 for t in range(27, 31)}}
    assert 20 not in seams and 20 not in inside
    meter = SeamMeter(segs, 40)
    rng = np.random.default_rng(0)
    for t in range(40):  # the same random frame throughout, a new one at the cut: error only at the cut
        if t in (0, 20):
            frame = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        meter.add(t, frame, frame)
    report = meter.report()
    assert report.cuts == 1 and report.seams == 2 and report.seam_pairs == 8 and report.seam_error == 0.0
    assert "over 2 seams (1 scene cut not counted) (8 frame pairs" in report.describe()


@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_a_late_segment_seeks_to_a_keyframe_and_decodes_the_same_frames(tmp_path, ext):
    """Keyframes every 3 frames, B-frames (decode order != display order): decoding from the keyframe
    before frame s gives exactly the frames (index, pts, pixels) of a decode from the start."""
    info = probe_video(make_clip(tmp_path / f"gop{ext}", n_frames=N_FRAMES, gop=3))
    keys = keyframes(info)
    whole = [(f.index, f.pts, f.rgb) for f in iter_frames(info)]
    assert [i for i, _ in keys] == [0, 3, 6, 9] and [p for _, p in keys] == [whole[i][1] for i in (0, 3, 6, 9)]
    for s in range(N_FRAMES):
        seek = seek_point(keys, s)
        assert seek == (None if s < 3 else keys[s // 3])
        part = [(f.index, f.pts, f.rgb) for f in iter_frames(info, start=s, seek=seek)]
        assert [(i, p) for i, p, _ in part] == [(i, p) for i, p, _ in whole[s:]]
        assert all(np.array_equal(a[2], b[2]) for a, b in zip(part, whole[s:]))


# --- on a local Ray ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A clip and style, the single-process reference and an uninterrupted Ray run (work dirs kept)."""
    root = tmp_path_factory.mktemp("ray")
    clip = make_clip(root / "in.mp4", n_frames=N_FRAMES, fps=12, gop=3)  # segment 1 seeks to frame 3
    style = root / "style.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(style)
    assert main(_args(root, clip, style, "single")) == 0
    return root, clip, style


def _args(root: Path, clip: Path, style: Path, name: str, *extra: str, quiet: bool = True) -> list[str]:
    return ["stylize", str(clip), "--style", str(style), "-o", str(root / f"{name}.mp4"),
            "--workdir", str(root / f"{name}.work"), "--keep-workdir", *FAST, *(["-q"] if quiet else []), *extra]


def _audio(path: Path) -> tuple[str, float, float]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return (stream.codec_context.name, float(stream.start_time * stream.time_base),
                float(stream.duration * stream.time_base))


def _segment_frames(work: Path) -> dict[str, bytes]:
    return {f"{d.name}/{p.name}": p.read_bytes()
            for d in sorted((work / "segments").iterdir()) for p in sorted((d / "frames").glob("*.png"))}


def _attempts(segment_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (segment_dir / "attempts.jsonl").read_text().splitlines()]


def _seam_line(out: str) -> tuple[float, float, float]:
    match = re.search(r"^seams: temporal error (\S+) over 1 seam \(3 frame pairs, worst \S+\) vs (\S+) inside "
                      r"segments \(\d+ pairs\): (\S+)x$", out, re.M)
    assert match, out
    return tuple(float(v) for v in match.groups())


@pytest.mark.slow
def test_ray_run_matches_the_single_process_run_in_frames_pts_and_audio(runs, capsys):
    root, clip, style = runs
    ray = pytest.importorskip("ray")
    started_here = not ray.is_initialized()
    capsys.readouterr()
    assert main(_args(root, clip, style, "ray", *SEGMENTS, "--ray", quiet=False)) == 0
    out, err = capsys.readouterr()
    seam, inside, ratio = _seam_line(out)  # the seam metric is reported
    assert all(math.isfinite(v) and v > 0 for v in (seam, inside, ratio))
    assert "ray" not in err.lower()  # Ray's own logs stay out of the terminal (only our progress bar)
    if started_here:
        assert not ray.is_initialized()  # the Ray the command started is shut down

    single_t, single_rgb = _decoded(root / "single.mp4")
    ray_t, ray_rgb = _decoded(root / "ray.mp4")
    src_t, _ = _decoded(clip)
    assert len(ray_t) == len(single_t) == len(src_t) == N_FRAMES
    assert ray_t == single_t == src_t  # the same pts, exactly
    assert ray_rgb[0].shape == single_rgb[0].shape == (48, 64, 3)
    assert _audio(root / "ray.mp4") == _audio(root / "single.mp4")  # same codec, start and length
    codec, start, length = _audio(root / "ray.mp4")
    assert codec == "aac" and abs(start + length - _audio(clip)[1] - _audio(clip)[2]) < 0.05

    # Two segments ran as tasks; the second stylised its 2 run-in frames too, with the source pts.
    work = root / "ray.work"
    dirs = sorted(p.name for p in (work / "segments").iterdir())
    assert dirs == ["000000-000005", "000003-end"]
    with av.open(str(clip)) as container:
        pts = [f.pts for f in container.decode(video=0)]
    second = [json.loads(line) for line in (work / "segments" / dirs[1] / "journal.jsonl").read_text().splitlines()]
    assert [e["pts"] for e in second] == pts[3:]
    attempts = _attempts(work / "segments" / dirs[1])
    assert [a["event"] for a in attempts] == ["start", "done"]
    assert attempts[0]["seek"] == [3, pts[3]]  # decoding started at the keyframe of frame 3, not at 0
    # The two segments' versions of an overlap frame differ: the cross-fade has a jump to spread.
    seg0 = np.asarray(Image.open(work / "segments" / dirs[0] / "frames" / "000004.png"))
    seg1 = np.asarray(Image.open(work / "segments" / dirs[1] / "frames" / "000001.png"))
    assert not np.array_equal(seg0, seg1)


@pytest.mark.slow
def test_worker_killed_mid_segment_is_retried_and_resumes_from_its_journal(runs, ray_local, monkeypatch, capsys):
    """SIGKILL of the worker of segment 1 once frame 6 is optimised (frames 3-5 journaled): Ray retries the
    task in a new worker, which resumes at frame 6; the frames equal the uninterrupted Ray run's."""
    root, clip, style = runs
    if not (root / "ray.work").exists():
        pytest.skip("needs the uninterrupted Ray run of the previous test")
    monkeypatch.setenv("VIDEOSTYLE_TEST_KILL_AT", "segment:1:frame:6")
    assert main(_args(root, clip, style, "killed", *SEGMENTS, "--ray")) == 0
    capsys.readouterr()
    seg1 = root / "killed.work" / "segments" / "000003-end"
    attempts = _attempts(seg1)
    assert [a["event"] for a in attempts] == ["start", "start", "done"]  # the first attempt died
    assert attempts[0]["pid"] != attempts[1]["pid"]  # in another worker process
    assert attempts[1]["resumed_from"] == 3 and attempts[2]["stylised"] == 9 - 3  # no finished frame redone
    assert _segment_frames(root / "killed.work") == _segment_frames(root / "ray.work")
    assert _decoded(root / "killed.mp4")[0] == _decoded(root / "ray.mp4")[0]

    # `videostyle resume WORKDIR` of a finished Ray work dir: every segment is done, only the encode runs.
    monkeypatch.delenv("VIDEOSTYLE_TEST_KILL_AT")
    (root / "killed.mp4").unlink()
    assert main(["resume", str(root / "killed.work"), "-q"]) == 0
    assert _attempts(seg1) == attempts  # no new attempt: nothing was stylised again
    assert _decoded(root / "killed.mp4")[0] == _decoded(root / "single.mp4")[0]
    shutil.rmtree(root / "killed.work")


@pytest.mark.slow
def test_ray_run_starts_a_segment_at_a_scene_cut_and_keeps_every_frame(runs, ray_local, capsys):
    """16 frames, a cut at 8: segments 0-4, 5-7 (run-in 3-4), 8-12 (at the cut: no run-in), 13-15 (run-in
    11-12). The output has the single-process run's frames and pts; the cut is no seam."""
    root, _, style = runs
    clip = make_clip(root / "cut.mp4", n_frames=16, fps=12, cut_at=8)
    assert main(_args(root, clip, style, "cut-single")) == 0
    capsys.readouterr()
    assert main(_args(root, clip, style, "cut-ray", *SEGMENTS, "--ray", quiet=False)) == 0
    out = capsys.readouterr().out
    assert re.search(r"^seams: temporal error \S+ over 2 seams \(1 scene cut not counted\) \(6 frame pairs", out, re.M), out
    work = root / "cut-ray.work"
    assert sorted(p.name for p in (work / "segments").iterdir()) == [
        "000000-000005", "000003-000008", "000008-000013", "000011-end"]
    manifest = json.loads((work / "manifest.json").read_text())
    assert manifest["scene_cuts"] == [8] and manifest["run_options"]["scene_cuts"] is True
    assert [s["cut"] for s in manifest["segments"]] == [False, False, True, False]
    assert _decoded(root / "cut-ray.mp4")[0] == _decoded(root / "cut-single.mp4")[0] == _decoded(clip)[0]
    assert len(_decoded(root / "cut-ray.mp4")[0]) == 16
    # Without the scan: the fixed-length plan (a seam across the cut), and the manifest says so.
    assert main(_args(root, clip, style, "cut-off", *SEGMENTS, "--ray", "--no-scene-cuts")) == 0
    manifest = json.loads((root / "cut-off.work" / "manifest.json").read_text())
    assert manifest["scene_cuts"] is None and not any(s["cut"] for s in manifest["segments"])


def test_ray_option_without_ray_installed_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # `import ray` raises ImportError
    style = tmp_path / "style.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(style)
    clip = make_clip(tmp_path / "in.mp4", n_frames=2, audio=None)
    assert main(["stylize", str(clip), "--style", str(style), "-o", str(tmp_path / "out.mp4"), "--ray"]) == 2
    assert capsys.readouterr().err == "videostyle: error: --ray needs Ray: pip install 'videostyle[ray]'\n"
    assert not (tmp_path / "out.mp4.videostyle-work").exists()


def test_multi_pass_with_ray_is_refused_before_any_work(tmp_path, capsys):
    style = tmp_path / "style.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(style)
    clip = make_clip(tmp_path / "in.mp4", n_frames=2, audio=None)
    assert main(["stylize", str(clip), "--style", str(style), "-o", str(tmp_path / "out.mp4"), "--passes", "2",
                 "--ray"]) == 2
    assert capsys.readouterr().err == (
        "videostyle: error: --passes needs the whole video in one process: run it without --ray\n")
    assert not (tmp_path / "out.mp4.videostyle-work").exists()
