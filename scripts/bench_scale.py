"""Scaling benchmark for `--ray`: prints a table, every figure measured in this one run.

    python scripts/bench_scale.py [--video ../shared/data/videos/realshort.mp4] [--frames 48] [--size 128]
                                  [--iters 40,20] [--workers 1,2] [--json out.json]

(1) frames/s of the single-process pipeline (1 torch thread, and torch's default) and of `--ray` with 1
    and 2 local CPU workers (one thread per worker, `--ray-cpus 1`), on the first --frames frames of a
    real clip, same settings; wall time from the call to the finished output (model loads, decode,
    encode included; `ray.init` excluded, reported apart, but the Ray worker processes' start and
    imports fall inside the Ray runs);
(2) the seam metric: the temporal warping error of the output (`videostyle evaluate`: flows on the
    source at its own size, the encoded video) at the frame pairs crossing a seam vs all other pairs,
    and the ratio (target: at most 1.5), for the last Ray run;
(3) the fixed costs of the scaling model (docs/SCALING.md): Ray start-up (ray.init + a first task
    round trip + shutdown) and the driver's encode throughput (frames/s of encode_video at the
    output size, PNG reads of the work dir included).
Untrained seeded weights unless --weights says otherwise (none can be downloaded on the dev machine).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from videostyle import images  # noqa: E402
from videostyle.config import RunOptions, StyleConfig  # noqa: E402
from videostyle.run.distributed import plan_segments, seam_pairs  # noqa: E402
from videostyle.tools.evaluate import evaluate_frames, read_frames  # noqa: E402
from videostyle.store.workdir import WorkDir, segment_dir  # noqa: E402
from videostyle.run.plan import estimated_frame_count  # noqa: E402
from videostyle.run.api import stylize_video  # noqa: E402
from videostyle.media.decode import iter_frames  # noqa: E402
from videostyle.media.encode import encode_video  # noqa: E402
from videostyle.media.probe import probe_video  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def trim(src: Path, dst: Path, frames: int) -> Path:
    """The first ``frames`` frames of ``src`` (with its audio up to there), near-lossless (crf 4)."""
    info = probe_video(src)

    def first():
        for f in iter_frames(info):
            if f.index >= frames:
                return
            yield f.rgb, f.pts

    encode_video(first(), output_path=dst, time_base=info.time_base, source=info, crf=4, preset="veryfast")
    return dst


def ray_start_cost(ray) -> float:
    """Seconds for ray.init (2 CPUs) + one trivial task round trip + shutdown."""
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    ray.get(ray.remote(lambda: os.getpid()).remote())
    ray.shutdown()
    return time.perf_counter() - t0


def encode_fps(workdir: Path, info, out: Path, size: tuple[int, int], length: int, overlap: int) -> float:
    """Frames/s of the driver's encode: read the journaled PNGs, resize, H.264 + audio (crf 18, medium)."""
    pts = [f.pts for f in iter_frames(info)]
    owned = []  # (work dir, local index) of every frame, from the segment that owns it
    for seg in plan_segments(len(pts), length=length, overlap=overlap):
        work = WorkDir.view(segment_dir(workdir, seg.name))
        stop = len(pts) if seg.stop is None else seg.stop
        owned += [(work, t - seg.first) for t in range(seg.start, stop)]
    t0 = time.perf_counter()
    encode_video(((images.resize_rgb(w.read_frame(j), size), p) for (w, j), p in zip(owned, pts)),
                 output_path=out, time_base=info.time_base, source=info)
    return len(owned) / (time.perf_counter() - t0)


def seam_metric(output: Path, source: Path, frame_count: int, length: int, overlap: int) -> dict:
    """E_t of the encoded output (as `videostyle evaluate`) at seam pairs vs the other pairs."""
    errors = evaluate_frames(read_frames(output), read_frames(source)).temporal_error  # errors[t-1] = E_t
    seams, _ = seam_pairs(plan_segments(frame_count, length=length, overlap=overlap), frame_count)
    at_seams = [errors[t - 1] for t in seams]
    inside = [errors[t - 1] for t in range(1, frame_count) if t not in seams]
    seam, rest = float(np.nanmean(at_seams)) if at_seams else None, float(np.nanmean(inside))
    return {"seams": len(set(seams.values())), "seam_pairs": len(at_seams), "seam_error": seam,
            "inside_error": rest, "ratio": seam / rest if seam is not None and rest else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--video", type=Path, default=DATA / "videos" / "realshort.mp4")
    p.add_argument("--style", type=Path, default=DATA / "styles" / "starry_night.jpg")
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--iters", default="40,20")
    p.add_argument("--workers", default="1,2", help="Ray worker counts to run (local CPUs)")
    p.add_argument("--segment-frames", type=int, default=None, help="default: frames/4")
    p.add_argument("--segment-overlap", type=int, default=None, help="default: segment frames/3, at most 10")
    p.add_argument("--weights", default="untrained")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    import ray

    first, later = (int(v) for v in args.iters.split(","))
    length = args.segment_frames or max(1, -(-args.frames // 4))
    overlap = args.segment_overlap if args.segment_overlap is not None else min(10, max(1, length // 3))
    cfg = StyleConfig(styles=(str(args.style),), size=args.size, iters_first=first, iters=later,
                      weights=args.weights)
    rows, figures = [], {"frames": args.frames, "size": args.size, "iters": args.iters,
                         "segment_frames": length, "segment_overlap": overlap, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bench_scale-") as tmp:
        tmp = Path(tmp)
        clip = trim(args.video, tmp / "clip.mp4", args.frames)
        info = probe_video(clip)
        n = estimated_frame_count(info)
        figures["ray_start_s"] = ray_start_cost(ray)

        # Warm-up (lazy imports, first allocations) so the first measured run is not charged for it.
        stylize_video(trim(clip, tmp / "warm.mp4", 2), tmp / "warm_out.mp4", cfg, RunOptions(device="cpu", quiet=True))
        default_threads = torch.get_num_threads()
        for threads in sorted({1, default_threads}):  # 1 thread: the same compute as one Ray worker
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            stylize_video(clip, tmp / "single.mp4", cfg, RunOptions(device="cpu", quiet=True))
            figures[f"single{threads}_fps"] = n / (time.perf_counter() - t0)
            rows.append((f"single process, {threads} torch thread{'s' if threads > 1 else ''}",
                         figures[f"single{threads}_fps"], n))
        torch.set_num_threads(default_threads)
        figures["single_fps"] = figures["single1_fps"]

        last = None
        for workers in (int(w) for w in args.workers.split(",")):
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
            try:
                out, work = tmp / f"ray{workers}.mp4", tmp / f"ray{workers}.work"
                opts = RunOptions(device="cpu", quiet=True, ray="local", segment_frames=length,
                                  segment_overlap=overlap, ray_cpus=1, workdir=str(work), keep_workdir=True)
                t0 = time.perf_counter()
                summary = stylize_video(clip, out, cfg, opts)
                fps = n / (time.perf_counter() - t0)
            finally:
                ray.shutdown()
            figures[f"ray{workers}_fps"] = fps
            figures[f"ray{workers}_run_seams"] = summary.seams.to_dict()
            rows.append((f"--ray, {workers} worker{'s' if workers > 1 else ''} x 1 thread, "
                         f"{summary.segments} segments", fps, n))
            last = (out, work)
        figures["seam"] = seam_metric(last[0], clip, n, length, overlap)
        figures["encode_fps"] = encode_fps(last[1], info, tmp / "enc.mp4", (info.width, info.height),
                                          length, overlap)

    print(f"# bench_scale: {args.video.name}, {n} frames at {args.size} px, iters {args.iters}, "
          f"segments of {length} + {overlap} overlap, {os.cpu_count()} CPUs, weights {args.weights}")
    print(f"| run | frames/s | vs single process, 1 thread |\n|---|---|---|")
    for name, fps, _ in rows:
        print(f"| {name} | {fps:.3f} | {fps / figures['single_fps']:.2f}x |")
    s = figures["seam"]
    ratio = f"{s['ratio']:.2f}" if s["ratio"] is not None else "n/a"
    seam = f"{s['seam_error']:.5f}" if s["seam_error"] is not None else "n/a"
    print(f"\n| figure | value |\n|---|---|")
    print(f"| temporal error at seams ({s['seams']} seams, {s['seam_pairs']} pairs; `evaluate` on the output) | {seam} |")
    print(f"| temporal error inside segments | {s['inside_error']:.5f} |")
    print(f"| seam / inside (target <= 1.5) | {ratio} |")
    print(f"| Ray start-up (init + first task + shutdown) | {figures['ray_start_s']:.2f} s |")
    print(f"| driver encode at {info.width}x{info.height} (PNG read + resize + x264 medium + audio) | "
          f"{figures['encode_fps']:.1f} frames/s |")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
