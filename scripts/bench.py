"""Speed benchmark: prints a table, every ratio measured side by side in this one run.

    python scripts/bench.py [--size 256] [--clip ../shared/data/videos/realshort.mp4] [--device auto]

(1) seconds per optimiser iteration of the pipeline's objective (content + style + temporal) vs. a
    bare VGG-19 forward+backward to relu5_1 at the same size: the overhead ratio;
(2) iterations (full-size equivalents: a coarse octave iteration counts 1/4) and seconds to reach a
    loss threshold on one real frame, from scratch (content init), warm start (previous stylised frame
    warped by DIS flow), and warm start + coarse-to-fine; the threshold is what from-scratch reaches
    after --ref-iters iterations;
(3) end-to-end frames per second of `videostyle stylize` on the first --frames frames of a real clip,
    decode, flow, journal and encode included;
(4) peak memory (process max RSS on CPU; max allocated on CUDA).
Untrained seeded weights by default (no weights can be downloaded here): timings do not depend on
the weights' values, but the iteration counts are only indicative of ImageNet behaviour.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from videostyle import images  # noqa: E402
from videostyle.config import RunOptions, StyleConfig  # noqa: E402
from videostyle.features import VGGEncoder, resolve_weights  # noqa: E402
from videostyle.flow import FlowEstimator, reliability_mask  # noqa: E402
from videostyle.optimise import (FrameObjective, LossWeights, TemporalTerm,  # noqa: E402
                                 compute_style_targets, stylise_coarse_to_fine, stylise_frame)
from videostyle.pipeline import pick_device, stylize_video  # noqa: E402
from videostyle.temporal import initial_image, mask_tensor, warp_previous  # noqa: E402

STYLE_LAYERS = {f"relu{i}_1": 0.2 for i in range(1, 6)}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def read_frames(path: Path, n: int) -> list:
    with av.open(str(path)) as c:
        out = []
        for frame in c.decode(video=0):
            out.append(frame.to_ndarray(format="rgb24"))
            if len(out) == n:
                return out
    return out


def trim_clip(src: Path, dst: Path, n_frames: int) -> None:
    """Copy the first n_frames video packets' worth of the clip (re-encoded) with its audio span."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        vin = inp.streams.video[0]
        vout = out.add_stream("libx264", rate=vin.average_rate)
        vout.width, vout.height, vout.pix_fmt = vin.codec_context.width, vin.codec_context.height, "yuv420p"
        vout.time_base = vout.codec_context.time_base = vin.time_base
        for i, frame in enumerate(inp.decode(vin)):
            if i == n_frames:
                break
            out.mux(vout.encode(frame))
        out.mux(vout.encode())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--clip", default=str(ROOT.parent / "shared/data/videos/realshort.mp4"))
    ap.add_argument("--style", default=str(ROOT.parent / "shared/data/styles/starry_night.jpg"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--weights", default="untrained")
    ap.add_argument("--ref-iters", type=int, default=100)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    device = pick_device(args.device)
    rows: list[tuple[str, str]] = []

    frames = read_frames(Path(args.clip), 2)
    h0, w0 = frames[0].shape[:2]
    size = images.working_size(w0, h0, args.size)
    contents = [images.to_tensor(images.resize_rgb(f, size), device) for f in frames]
    style_rgb = images.load_image(args.style)
    style = images.to_tensor(images.resize_rgb(style_rgb, images.working_size(
        style_rgb.shape[1], style_rgb.shape[0], args.size)), device)
    weights = resolve_weights(args.weights)
    enc = VGGEncoder(["relu4_2", *STYLE_LAYERS], weights).to(device)
    targets = compute_style_targets(enc, [style], [1.0], list(STYLE_LAYERS))
    lw = LossWeights(1.0, 20.0, 0.0, {"relu4_2": 1.0}, STYLE_LAYERS)

    # Frame 0 stylised from scratch: the "previous output" for the warm-start measurements.
    obj0 = FrameObjective(enc, contents[0], targets, lw)
    prev = images.to_tensor(images.to_uint8(stylise_frame(obj0, contents[0], iterations=args.ref_iters).image),
                            device)
    est = FlowEstimator("dis")
    small = [images.resize_rgb(f, size) for f in frames]
    back, fwd = est(small[1], small[0]), est(small[0], small[1])
    mask = mask_tensor(reliability_mask(back, fwd), device)
    warped = warp_previous(prev, back)
    temporal = [TemporalTerm(warped, mask, StyleConfig.__dataclass_fields__["temporal_weight"].default)]
    objective = FrameObjective(enc, contents[1], targets, lw, temporal)

    # (1) overhead ratio, alternating the two measurements so machine load hits both alike.
    bare = VGGEncoder(["relu5_1"], weights).to(device)
    n_it = 10

    def bare_run():
        for _ in range(n_it):
            x = contents[1].clone().requires_grad_(True)
            bare(x)["relu5_1"].sum().backward()

    def pipeline_run():
        stylise_frame(objective, contents[1], iterations=n_it)

    t_bare, t_pipe = [], []
    for _ in range(args.reps):
        for fn, acc in ((bare_run, t_bare), (pipeline_run, t_pipe)):
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            acc.append((time.perf_counter() - t) / n_it)
    tb, tp = statistics.median(t_bare), statistics.median(t_pipe)
    rows += [(f"bare VGG-19 fwd+bwd to relu5_1, {size[0]}x{size[1]}", f"{tb * 1000:.1f} ms"),
             (f"pipeline iteration (L-BFGS, content+style+temporal)", f"{tp * 1000:.1f} ms"),
             ("(1) overhead ratio", f"{tp / tb:.3f}")]

    # (2) iterations to the threshold.
    ref = stylise_frame(objective, contents[1], iterations=args.ref_iters)
    threshold = min(ref.history)

    def first_below(history, cost_of):
        for i, loss in enumerate(history):
            if loss <= threshold:
                return cost_of(i)
        return float("inf")

    t = time.perf_counter()
    warm_init = initial_image("prev-warped", content=contents[1], previous=prev, warped_previous=warped,
                              mask=mask)
    warm = stylise_frame(objective, warm_init, iterations=args.ref_iters)
    t_warm = time.perf_counter() - t
    coarse_iters = args.ref_iters
    t = time.perf_counter()
    c2f = stylise_coarse_to_fine(enc, contents[1], warm_init, targets, lw, temporal,
                                 iterations=args.ref_iters, coarse_iterations=coarse_iters, octaves=2)
    t_c2f = time.perf_counter() - t
    scratch_it = first_below(ref.history, lambda i: i + 1)
    warm_it = first_below(warm.history, lambda i: i + 1)
    c2f_it = first_below(c2f.history, lambda i: (i + 1) / 4 if i < coarse_iters
                         else coarse_iters / 4 + (i + 1 - coarse_iters))
    rows += [(f"(2) loss threshold (from scratch after {args.ref_iters} it)", f"{threshold:.4g}"),
             ("    from scratch: iterations", f"{scratch_it}"),
             ("    warm start: iterations", f"{warm_it}"),
             ("    warm + coarse-to-fine (2 octaves): full-size-equivalent iterations", f"{c2f_it:g}"),
             ("    warm start vs scratch", f"{warm_it / scratch_it:.2f}x"),
             ("    warm + c2f vs scratch", f"{c2f_it / scratch_it:.2f}x"),
             (f"    seconds for {args.ref_iters} it: scratch / warm / warm+c2f",
              f"{tp * args.ref_iters:.1f} / {t_warm:.1f} / {t_c2f:.1f}")]

    # (3) end to end on a real clip.
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        trim_clip(Path(args.clip), clip, args.frames)
        cfg = StyleConfig(styles=(args.style,), size=args.size, iters_first=args.ref_iters,
                          iters=args.ref_iters // 2, weights=args.weights)
        t = time.perf_counter()
        summary = stylize_video(clip, Path(tmp) / "out.mp4", cfg, RunOptions(device=args.device, quiet=True))
        total = time.perf_counter() - t
    rows += [(f"(3) end to end, {summary.frames} frames, iters {cfg.iters_first},{cfg.iters}",
              f"{summary.frames / total:.3f} frames/s ({total / summary.frames:.2f} s/frame)")]

    # (4) peak memory.
    if device.type == "cuda":
        rows.append(("(4) peak CUDA memory allocated", f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"))
    rows.append(("(4) peak process RSS", f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"))

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"videostyle bench: device {device_name}, weights {weights.weights_id}, torch {torch.__version__}")
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
