"""Temporal coherence benchmark: flicker (temporal warping error E) and style loss per variant.

    python scripts/bench_temporal.py [--size 256] [--iters 30] [--frames 6] [--weights untrained]

Two clips: (1) KNOWN motion made here: a real photo under a smooth camera pan, zoom and small rotation
(cv2.warpAffine of the photo, so the true motion is exact); (2) the first --frames frames of a real
clip. Each is stylised, at equal iterations per frame, as
    (a) independent frames      --init content     --temporal-weight 0
    (b) warm start only         --init prev-warped --temporal-weight 0
    (c) warm start + temporal   --init prev-warped --temporal-weight W   (for each W in --temporal-weights)
and the table gives E (`videostyle evaluate`, flows measured on the source) and the mean style loss.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from videostyle import images  # noqa: E402
from videostyle.config import RunOptions, StyleConfig  # noqa: E402
from videostyle.evaluate import evaluate_frames, read_frames  # noqa: E402
from videostyle.pipeline import stylize_video  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def write_clip(frames: list[np.ndarray], path: Path, fps: int = 12) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"crf": "8"})
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for rgb in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode())


def known_motion_frames(photo: Path, n: int, size: tuple[int, int]) -> list[np.ndarray]:
    """Camera pan (3 px/frame), zoom (+1%/frame) and rotation (0.3 deg/frame) over a photo."""
    rgb = images.load_image(photo)
    w, h = size
    big = images.resize_rgb(rgb, images.working_size(rgb.shape[1], rgb.shape[0], int(max(size) * 1.6)))
    cy, cx = big.shape[0] / 2, big.shape[1] / 2
    frames = []
    for t in range(n):
        m = cv2.getRotationMatrix2D((cx + 3 * t, cy), 0.3 * t, 1.0 + 0.01 * t)
        m[:, 2] -= (cx - w / 2, cy - h / 2)  # centre the output window
        frames.append(cv2.warpAffine(big, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT))
    return frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--weights", default="untrained")
    ap.add_argument("--temporal-weights", default="200,1000")
    ap.add_argument("--photo", default=str(DATA / "content" / "tubingen.jpg"))
    ap.add_argument("--clip", default=str(DATA / "videos" / "realshort.mp4"))
    ap.add_argument("--style", default=str(DATA / "styles" / "starry_night.jpg"))
    args = ap.parse_args()

    variants = {"(a) independent": dict(init="content", temporal_weight=0.0),
                "(b) warm start": dict(init="prev-warped", temporal_weight=0.0)}
    for w in args.temporal_weights.split(","):
        variants[f"(c) warm + temporal {float(w):g}"] = dict(init="prev-warped", temporal_weight=float(w))

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        working = (args.size, args.size * 3 // 4)
        clips = {"known motion": tmp / "known.mp4", "real: " + Path(args.clip).name: tmp / "real.mp4"}
        write_clip(known_motion_frames(Path(args.photo), args.frames, working), clips["known motion"])
        write_clip(read_frames(args.clip)[: args.frames], clips["real: " + Path(args.clip).name])
        for clip_name, clip in clips.items():
            source = read_frames(clip)
            baseline = None
            for name, extra in variants.items():
                cfg = StyleConfig(styles=(args.style,), size=args.size, iters_first=args.iters,
                                  iters=args.iters, weights=args.weights, **extra)
                out = tmp / "out.mp4"
                t = time.perf_counter()
                stylize_video(clip, out, cfg, RunOptions(quiet=True, output_size="working", crf=0))
                seconds = time.perf_counter() - t
                result = evaluate_frames(read_frames(out), source, styles=(args.style,), weights=args.weights)
                e, style = result.mean_temporal_error, float(result.style_loss.mean())
                baseline = baseline or (e, style)
                rows.append((clip_name, name, e, e / baseline[0], style, style / baseline[1], seconds / len(source)))
                print(f"... {clip_name} {name}: E {e:.5f}", file=sys.stderr, flush=True)

    print(f"bench_temporal: size {args.size}, {args.iters} L-BFGS iterations per frame, {args.frames} frames, "
          f"weights {args.weights}, style {Path(args.style).name}")
    print(f"{'clip':<22} {'variant':<26} {'E':>9} {'E/E(a)':>7} {'style':>8} {'style/(a)':>9} {'s/frame':>8}")
    for clip_name, name, e, e_ratio, style, s_ratio, spf in rows:
        print(f"{clip_name:<22} {name:<26} {e:>9.5f} {e_ratio:>7.3f} {style:>8.4f} {s_ratio:>9.3f} {spf:>8.2f}")


if __name__ == "__main__":
    main()
