"""Temporal coherence benchmark: flicker (temporal warping error E) and style loss per variant.

    python scripts/bench_temporal.py [--size 256] [--iters 30 | --iters FIRST,LATER] [--octaves 1]
                                     [--frames 6] [--weights untrained] [--temporal-weights 50]
                                     [--variants a,b,c] [--clips known,real] [--jobs N] [--threads N]
                                     [--init prev-warped-unchanged|prev-warped-inside|prev-warped]
                                     [--new-content-style W] [--tol 0.01] [--json out.json]

Two clips:
  known  KNOWN motion made here: a real photo (--photo) under a smooth camera path (pan, zoom and a
         small rotation, cv2.warpAffine of the photo), so the true flow t -> t-1 of every pixel is exact;
  real   the first --frames frames of a real clip (--clip, default realshort.mp4: handheld).
Each is stylised by the real pipeline (`stylize_video`), at the same L-BFGS iterations in every variant
(--iters for every frame, or FIRST,LATER; --octaves coarse-to-fine levels, 1 by default as measured
before the speed work), as
    (a) independent frames      --init content     --temporal-weight 0
    (b) warm start only         --init INIT --temporal-weight 0
    (c) warm start + temporal   --init INIT --temporal-weight W   (for each W in --temporal-weights)
(--init: prev-warped-unchanged, the default, prev-warped-inside or prev-warped)
Columns (E = mean_t sum M_t |O_t - warp(O_t-1)|^2 / (3 sum M_t), pixels in [0, 1]):
    E frames   E of the stylised frames as the optimiser wrote them (lossless PNGs of the work dir),
               flow and mask by DIS on the source, as `videostyle evaluate` measures them
    E true     known clip only: the same E with the exact flow (and the in-frame mask) instead of DIS
    E video    `videostyle evaluate OUT --source SRC` on the encoded MP4 (H.264 crf 0, yuv420p): the
               4:2:0 chroma subsampling alone adds a floor of ~5e-4 on stylised frames, see docs/TEMPORAL.md
    style      mean style loss per frame (the optimiser's weighted term, --weights), on the lossless frames
    (ref)      known clip only: the photo stylised once (same iterations, style scaled as for a frame),
               then filmed with the same camera: a perfectly stable video. Its E is what resampling
               alone costs; blurrier frames score lower E, so read E together with the style loss.
Ratios are to (a) of the same clip. The script prints one progress line per variant on stderr and the
table on stdout. Nothing is written outside a temp dir except --json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from videostyle import images  # noqa: E402
from videostyle.config import RunOptions, StyleConfig  # noqa: E402
from videostyle.tools.evaluate import evaluate_frames, read_frames  # noqa: E402
from videostyle.model.features import resolve_weights  # noqa: E402
from videostyle.motion.flow import FlowEstimator  # noqa: E402
from videostyle.model.metrics import temporal_warping_error, warping_error  # noqa: E402
from videostyle.run.api import stylize_image, stylize_video  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def write_clip(frames: list[np.ndarray], path: Path, fps: int = 12) -> None:
    """H.264 crf 0 (lossless luma; chroma is 4:2:0) at the frames' size."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"crf": "0"})
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for rgb in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode())


# --------------------------------------------------------------------------------------------------
# Known motion


def camera_matrix(t: int, *, centre: tuple[float, float], size: tuple[int, int], pan: tuple[float, float],
                  zoom: float, rotation_deg: float) -> np.ndarray:
    """``(3, 3)`` affine map from photo pixels to frame ``t``'s pixels (pixel centres at integers).

    The camera looks at ``centre + t * pan`` (photo px), magnified ``(1 + zoom) ** t`` and rotated by
    ``t * rotation_deg``; that point lands on the frame's centre.
    """
    w, h = size
    cx, cy = centre[0] + t * pan[0], centre[1] + t * pan[1]
    s = (1.0 + zoom) ** t
    a = np.deg2rad(rotation_deg * t)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) * s
    m = np.eye(3)
    m[:2, :2] = rot
    m[:2, 2] = np.array([(w - 1) / 2, (h - 1) / 2]) - rot @ np.array([cx, cy])
    return m


@dataclass
class KnownClip:
    """A smooth camera move over a photo: ``frames`` and the exact backward flows ``truth``.

    Attributes:
        frames: n ``(H, W, 3)`` uint8.
        truth: ``{t: (flow (H, W, 2) px t -> t-1, mask (H, W))}`` for t = 1..n-1; the mask is 1 where
            ``p + flow(p)`` lies inside frame t-1.
        photo: the ``(h, w, 3)`` uint8 photo the camera films; mats: its ``(3, 3)`` photo -> frame maps.
    """

    frames: list
    truth: dict
    photo: np.ndarray
    mats: list

    def film(self, picture: np.ndarray) -> list[np.ndarray]:
        """The same camera move over ``picture`` (same size as ``photo``)."""
        h, w = self.frames[0].shape[:2]
        return [cv2.warpAffine(picture, m[:2], (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
                for m in self.mats]


def known_motion_clip(photo: Path, n: int, size: tuple[int, int]) -> KnownClip:
    """Frames of a smooth camera move over ``photo`` (resized to 1.6x the frame) and their exact flows.

    Motion per frame: pan 2 px right and 1 px down, zoom in 1.5 %, rotation 0.4 deg (at 256 px wide;
    the pan scales with the width), so pixels move ~1-4 px per frame.
    """
    w, h = size
    rgb = images.load_image(photo)
    big = images.resize_rgb(rgb, images.working_size(rgb.shape[1], rgb.shape[0], int(max(size) * 1.6)))
    bh, bw = big.shape[:2]
    unit = w / 256
    kw = dict(centre=((bw - 1) / 2, (bh - 1) / 2), size=size, pan=(2.0 * unit, 1.0 * unit),
              zoom=0.015, rotation_deg=0.4)
    mats = [camera_matrix(t, **kw) for t in range(n)]
    corners = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], float).T
    for m in mats:
        seen = np.linalg.inv(m) @ corners
        if seen[0].min() < 0 or seen[1].min() < 0 or seen[0].max() > bw - 1 or seen[1].max() > bh - 1:
            raise SystemExit(f"--frames {n}: the camera path leaves the photo; use fewer frames")
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    grid = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    truth = {}
    for t in range(1, n):
        q = (mats[t - 1] @ np.linalg.inv(mats[t]) @ grid)[:2].T.reshape(h, w, 2)
        flow = (q - np.stack([xs, ys], axis=-1)).astype(np.float32)
        mask = ((q[..., 0] >= 0) & (q[..., 0] <= w - 1) & (q[..., 1] >= 0) & (q[..., 1] <= h - 1))
        truth[t] = (flow, mask.astype(np.float32))
    clip = KnownClip([], truth, big, mats)
    clip.frames = [np.zeros((h, w, 3), np.uint8)]
    clip.frames = clip.film(big)
    return clip


def dis_endpoint_error(frames: list[np.ndarray], truth: dict) -> float:
    """Mean |DIS flow - true flow| in px over the in-frame pixels, all frame pairs."""
    est = FlowEstimator("dis")
    errs = []
    for t, (flow, mask) in truth.items():
        epe = np.linalg.norm(est(frames[t], frames[t - 1]) - flow, axis=-1)
        errs.append(float((epe * mask).sum() / mask.sum()))
    return float(np.mean(errs))


def true_flow_error(stylised: list[np.ndarray], truth: dict) -> float:
    return float(np.nanmean([warping_error(stylised[t], stylised[t - 1], *truth[t]) for t in truth]))


# --------------------------------------------------------------------------------------------------


def work_frames(workdir: Path) -> list[np.ndarray]:
    return [np.array(Image.open(p).convert("RGB")) for p in sorted((workdir / "frames").glob("*.png"))]


def run_clip(kind: str, args: argparse.Namespace) -> tuple[list[dict], str]:
    """Stylise one clip (``known`` or ``real``) with every variant; returns its rows and a note."""
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = {"(a) independent": dict(init="content", temporal_weight=0.0),
                "(b) warm start": dict(init=args.init, temporal_weight=0.0)}
    for w in args.temporal_weights.split(","):
        variants[f"(c) warm+temporal {float(w):g}"] = dict(init=args.init, temporal_weight=float(w))
    wanted = args.variants.split(",")
    variants = {name: extra for name, extra in variants.items() if name[1] in wanted}
    working = images.working_size(4, 3, args.size)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = tmp / f"{kind}.mp4"
        known, truth = None, None
        if kind == "known":
            known = known_motion_clip(Path(args.photo), args.frames, working)
            truth = known.truth
            write_clip(known.frames, clip)
            clip_name = "known motion"
            note = (f"known motion: {Path(args.photo).name} at {working[0]}x{working[1]}; DIS end-point error "
                    f"vs the true flow {dis_endpoint_error(read_frames(clip), truth):.3f} px")
        else:
            real = read_frames(args.clip)[: args.frames]
            write_clip(real, clip)
            clip_name = "real: " + Path(args.clip).name
            note = (f"real: first {len(real)} frames of {Path(args.clip).name} ({real[0].shape[1]}x"
                    f"{real[0].shape[0]}), stylised at {working[0]}x{working[1]}")
        source = read_frames(clip)

        def measure(name: str, weight: float, stylised: list, video: Path, seconds: float) -> dict:
            result = evaluate_frames(stylised, source, styles=(args.style,), weights=args.weights, model=args.model)
            row = dict(clip=clip_name, variant=name, temporal_weight=weight,
                       e_frames=result.mean_temporal_error,
                       e_true=true_flow_error(stylised, truth) if truth else None,
                       e_video=float(np.nanmean(temporal_warping_error(read_frames(video), source))),
                       style=float(result.style_loss.mean()), content=float(result.content_loss.mean()),
                       s_per_frame=seconds / len(source),
                       per_frame=dict(e_frames=result.temporal_error.tolist(), style=result.style_loss.tolist()))
            base = rows[0] if rows else row
            row["e_ratio"] = row["e_frames"] / base["e_frames"]
            row["e_true_ratio"] = row["e_true"] / base["e_true"] if truth else None
            # The reference's style loss is not comparable: with untrained weights the Gram loss of a crop
            # of a larger stylised picture is far from that of a frame optimised at the frame's size.
            row["style_ratio"] = row["style"] / base["style"] if not name.startswith("(ref)") else None
            print(f"... {clip_name} {name}: E frames {row['e_frames']:.6f}, style {row['style']:.4f}, "
                  f"{row['s_per_frame']:.1f} s/frame", file=sys.stderr, flush=True)
            return row

        for name, extra in variants.items():
            cfg = StyleConfig(styles=(args.style,), size=args.size, iters_first=args.iters[0],
                              iters=args.iters[1], octaves=args.octaves, range_weight=args.range_weight,
                              tol_loss_relative=args.tol, weights=args.weights, model=args.model,
                              new_content_style=args.new_content_style, **extra)
            out, work = tmp / "out.mp4", tmp / "work"
            shutil.rmtree(work, ignore_errors=True)
            t = time.perf_counter()
            stylize_video(clip, out, cfg, RunOptions(quiet=True, output_size="working", crf=0,
                                                     workdir=str(work), keep_workdir=True))
            rows.append(measure(name, extra["temporal_weight"], work_frames(work), out, time.perf_counter() - t))
        if known is not None and args.reference:
            # A perfectly stable video: the photo stylised once (the style image scaled as for one
            # frame), then filmed with the same camera. Its E is what resampling alone costs.
            photo_png, styled_png = tmp / "photo.png", tmp / "photo_styled.png"
            images.save_image(known.photo, photo_png)
            long_edge = max(known.photo.shape[:2])
            cfg = StyleConfig(styles=(args.style,), size=long_edge, iters_first=args.iters[0], octaves=args.octaves,
                              range_weight=args.range_weight,
                              style_scale=max(working) / long_edge, weights=args.weights, model=args.model)
            t = time.perf_counter()
            stylize_image(photo_png, styled_png, cfg)
            filmed = known.film(images.load_image(styled_png))
            write_clip(filmed, tmp / "filmed.mp4")
            rows.append(measure("(ref) stylised photo filmed", 0.0, filmed, tmp / "filmed.mp4",
                                time.perf_counter() - t))
    return rows, note


def _iters(text: str) -> tuple[int, int]:
    parts = [int(p) for p in text.split(",")]
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="working long edge, px (default 256)")
    ap.add_argument("--iters", type=_iters, default=(30, 30),
                    help="L-BFGS iterations for every frame, or FIRST,LATER (default 30)")
    ap.add_argument("--octaves", type=int, default=1, help="coarse-to-fine levels (default 1)")
    default_range = StyleConfig.__dataclass_fields__["range_weight"].default
    ap.add_argument("--range-weight", type=float, default=default_range,
                    help=f"penalty on pixels outside [0, 1] (default {default_range:g}, the pipeline's)")
    ap.add_argument("--init", default=StyleConfig.init,
                    choices=("prev-warped-unchanged", "prev-warped-inside", "prev-warped"),
                    help=f"init of later frames in (b) and (c) (default {StyleConfig.init})")
    default_new = StyleConfig.__dataclass_fields__["new_content_style"].default
    ap.add_argument("--new-content-style", type=float, default=default_new,
                    help=f"the style term on new content in (b) and (c), as videostyle stylize's (default "
                         f"{default_new:g})")
    ap.add_argument("--tol", type=float, default=0.0,
                    help="early stop of each frame, as videostyle stylize --tol (default 0: off)")
    ap.add_argument("--variants", default="a,b,c", help="which of a, b, c to run (default a,b,c)")
    ap.add_argument("--frames", type=int, default=6, help="frames per clip (default 6)")
    ap.add_argument("--weights", default="untrained",
                    help="auto|imagenet|untrained|hed|PATH (default untrained; hed: the trained VGG-16 (HED "
                         "fine-tune of ImageNet VGG-16) of scripts/trained_weights.py, with --model vgg16)")
    ap.add_argument("--model", default="vgg19", help="vgg19|vgg16 (default vgg19)")
    default_weight = f"{StyleConfig.__dataclass_fields__['temporal_weight'].default:g}"
    ap.add_argument("--temporal-weights", default=default_weight,
                    help=f"(c) variants, comma-separated (default {default_weight}: the pipeline's default)")
    ap.add_argument("--clips", default="known,real", help="known, real or both (default known,real)")
    ap.add_argument("--photo", default=str(DATA / "content" / "tubingen.jpg"))
    ap.add_argument("--clip", default=str(DATA / "videos" / "realshort.mp4"))
    ap.add_argument("--style", default=str(DATA / "styles" / "starry_night.jpg"))
    ap.add_argument("--jobs", type=int, default=0,
                    help="clips stylised in parallel processes (default: one per clip on a CPU-only machine "
                         "with 2+ cores, else 1)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads per process (default: CPU cores / jobs)")
    ap.add_argument("--no-reference", dest="reference", action="store_false",
                    help="skip the known clip's reference row (the photo stylised once, then filmed)")
    ap.add_argument("--json", help="also write the rows as JSON here")
    args = ap.parse_args()
    kinds = [k for k in ("known", "real") if k in args.clips.split(",")]
    cpus = os.cpu_count() or 1
    jobs = args.jobs or (min(len(kinds), cpus) if not torch.cuda.is_available() else 1)
    args.threads = args.threads or max(1, cpus // jobs)

    started = time.perf_counter()
    if jobs > 1:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(run_clip, kinds, [args] * len(kinds)))
    else:
        results = [run_clip(kind, args) for kind in kinds]
    rows = [row for clip_rows, _ in results for row in clip_rows]
    notes = [note for _, note in results]

    cpu = platform.processor() or platform.machine()
    print(f"bench_temporal: {' '.join(sys.argv[1:]) or '(defaults)'}")
    print(f"size {args.size}, L-BFGS iterations {args.iters[0]} (first frame), {args.iters[1]} (later), "
          f"octaves {args.octaves}, {args.frames} frames, weights "
          f"{resolve_weights(args.weights, args.model).label}, style {Path(args.style).name}; torch {torch.__version__}, {cpus} CPUs ({cpu}), "
          f"{jobs} process(es) x {args.threads} thread(s), no GPU used; {time.perf_counter() - started:.0f} s")
    for note in notes:
        print(note)
    print(f"{'clip':<20} {'variant':<28} {'E frames':>9} {'/(a)':>6} {'E true':>9} {'/(a)':>6} "
          f"{'E video':>9} {'style':>7} {'/(a)':>6} {'s/frame':>7}")
    for r in rows:
        e_true = f"{r['e_true']:>9.6f} {r['e_true_ratio']:>6.3f}" if r["e_true"] is not None else f"{'-':>9} {'-':>6}"
        style = f"{r['style']:>7.4f} {r['style_ratio']:>6.3f}" if r["style_ratio"] is not None else f"{'-':>7} {'-':>6}"
        print(f"{r['clip']:<20} {r['variant']:<28} {r['e_frames']:>9.6f} {r['e_ratio']:>6.3f} {e_true} "
              f"{r['e_video']:>9.6f} {style} {r['s_per_frame']:>7.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(argv=sys.argv[1:], notes=notes, rows=rows), indent=1))


if __name__ == "__main__":
    main()
