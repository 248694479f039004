"""Speed benchmark: prints a table, every ratio measured side by side in this one run.

    python scripts/bench.py [--size 256] [--clip ../shared/data/videos/realshort.mp4] [--device auto]
                            [--quality draft] [--precisions fp32,bf16] [--check-size 1920x1080]
                            [--parts 1,2,3,4]

(1) seconds per optimiser iteration of the pipeline (content + style + temporal, L-BFGS, timed over a
    whole --ref-iters frame, so the optimiser's own work is counted) vs. a bare VGG-19 forward+backward
    to relu5_1 at the same size: the overhead ratio; one row per --precisions entry;
(2) iterations (full-size equivalents: an iteration at 1/2 size counts 1/4) and seconds to reach a
    loss threshold on one real frame, from scratch (content init), warm start (previous stylised frame
    warped by DIS flow; the default --init, and --init prev-warped), and warm start + coarse-to-fine
    (2 and 3 octaves; also from scratch + c2f); the threshold is what from scratch reaches after
    --ref-iters iterations;
(3) end-to-end frames per second of `videostyle stylize` at --quality (its iterations and octaves, at
    --size) on the first --frames frames of a real clip, decode, flow, journal and encode included;
(4) peak memory (process max RSS on CPU; max allocated on CUDA), and with --check-size WxH whether
    one iteration at that size (e.g. 1920x1080) fits, with its peak memory;
(5) with --tiled WxH: seconds per iteration and peak memory of one frame at that size, --tile-iters
    iterations: planned for --budget GiB of process memory (on the CPU bands, elsewhere tiles, and the
    L-BFGS history the plan keeps; --tile-px forces a tile), then untiled with the same history (each in
    a fresh process, so each peak RSS is its own); and, from videostyle.model.memory's model, the largest
    16:9 frame whose frame budget is --budget GiB, untiled, in tiles and in bands.
Untrained seeded weights by default (no weights can be downloaded here): timings do not depend on
the weights' values, but the iteration counts are only indicative of ImageNet behaviour.
"""

from __future__ import annotations

import argparse
import json
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
from videostyle.config import QUALITY_PRESETS, RunOptions, StyleConfig  # noqa: E402
from videostyle.model.features import VGGEncoder, resolve_weights  # noqa: E402
from videostyle.motion.flow import FlowEstimator, reliability_mask  # noqa: E402
from videostyle.model.optimise import (FrameObjective, LossWeights, TemporalTerm,  # noqa: E402
                                 compute_style_targets, octave_sizes, stylize_coarse_to_fine,
                                 stylize_frame)
from videostyle.step import pick_device  # noqa: E402
from videostyle.run.api import stylize_video  # noqa: E402
from videostyle.motion.temporal import (initial_image, mask_tensor, source_changed, warm_start_mask,  # noqa: E402
                                       warp_previous)
from videostyle.model.tiling import tile_grid  # noqa: E402

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


def check_size(size: tuple[int, int], rgb, enc, targets, lw, device) -> tuple[str, str]:
    """Whether one pipeline iteration at ``size`` ``(W, H)`` px (the clip's frame, resized) fits in memory."""
    content = images.to_tensor(images.resize_rgb(rgb, size), device)
    temporal = [TemporalTerm(content, torch.ones_like(content[:, :1]), 50.0)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        t = time.perf_counter()
        stylize_frame(FrameObjective(enc, content, targets, lw, temporal), content, iterations=2,
                      evaluate_result=False)
        sync(device)
        seconds = (time.perf_counter() - t) / 2
    except torch.OutOfMemoryError:
        return f"(4) one iteration at {size[0]}x{size[1]}", "out of memory"
    peak = (f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB CUDA" if device.type == "cuda" else
            f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB RSS")
    return f"(4) one iteration at {size[0]}x{size[1]}", f"fits: {seconds * 1000:.0f} ms, peak {peak}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--clip", default=str(ROOT.parent / "shared/data/videos/realshort.mp4"))
    ap.add_argument("--style", default=str(ROOT.parent / "shared/data/styles/starry_night.jpg"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--weights", default="untrained", help="auto|imagenet|untrained|hed|PATH (default untrained)")
    ap.add_argument("--model", default="vgg19", help="vgg19|vgg16 (default vgg19; --weights hed needs vgg16)")
    ap.add_argument("--ref-iters", type=int, default=100)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--coarse-iters", type=int, default=30,
                    help="iterations at each coarse level in (2) (default 30: a preset's later-frame count)")
    ap.add_argument("--overhead-iters", type=int, default=30,
                    help="iterations per timed frame in (1) (default 30)")
    ap.add_argument("--quality", choices=QUALITY_PRESETS, default="draft",
                    help="preset whose iterations and octaves (3) uses, at --size (default draft)")
    ap.add_argument("--precisions", default=None,
                    help="precisions for (1), comma-separated (default fp32 on CPU, fp32,bf16 on CUDA)")
    ap.add_argument("--parts", default="1,2,3,4", help="which measurements to run (default 1,2,3,4)")
    ap.add_argument("--tiled", default=None, help="(5): the frame size WxH to compare tiled and untiled at")
    ap.add_argument("--tile-px", type=int, default=None, help="(5): force this tile instead of the plan for --budget")
    ap.add_argument("--tile-iters", type=int, default=5)
    ap.add_argument("--lbfgs-history", type=int, default=5, help=argparse.SUPPRESS)  # (5)'s untiled child
    ap.add_argument("--budget", type=float, default=2.5, help="GiB: (5)'s memory plan (the process's peak)")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--check-size", default=None,
                    help="also check that one iteration at WxH fits in memory (e.g. 1920x1080)")
    args = ap.parse_args()
    if args._child:  # (5)'s measurement in its own process
        print(json.dumps(tiled_child(args)))
        return
    if args.tiled:
        rows = tiled_rows(args)
        width = max(len(k) for k, _ in rows)
        print(f"videostyle bench (5): weights {args.weights}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads")
        for key, value in rows:
            print(f"{key:<{width}}  {value}")
        return
    parts = {int(p) for p in args.parts.split(",")}
    device = pick_device(args.device)
    if args.precisions is None:
        args.precisions = "fp32,bf16" if device.type == "cuda" else "fp32"
    rows: list[tuple[str, str]] = []

    frames = read_frames(Path(args.clip), 2)
    h0, w0 = frames[0].shape[:2]
    size = images.working_size(w0, h0, args.size)
    contents = [images.to_tensor(images.resize_rgb(f, size), device) for f in frames]
    style_rgb = images.load_image(args.style)
    style = images.to_tensor(images.resize_rgb(style_rgb, images.working_size(
        style_rgb.shape[1], style_rgb.shape[0], args.size)), device)
    weights = resolve_weights(args.weights, args.model)
    enc = VGGEncoder(["relu4_2", *STYLE_LAYERS], weights).to(device)
    targets = compute_style_targets(enc, [style], [1.0], list(STYLE_LAYERS))
    lw = LossWeights(1.0, 20.0, 0.0, {"relu4_2": 1.0}, STYLE_LAYERS,
                     range=StyleConfig.__dataclass_fields__["range_weight"].default)

    # Frame 0 stylised from scratch: the "previous output" for the warm-start measurements.
    obj0 = FrameObjective(enc, contents[0], targets, lw)
    prev = images.to_tensor(images.to_uint8(stylize_frame(obj0, contents[0], iterations=args.ref_iters).image),
                            device)
    est = FlowEstimator("dis")
    small = [images.resize_rgb(f, size) for f in frames]
    back, fwd = est(small[1], small[0]), est(small[0], small[1])
    reliable = reliability_mask(back, fwd)
    mask = mask_tensor(reliable, device)
    warped = warp_previous(prev, back)
    temporal = [TemporalTerm(warped, mask, StyleConfig.__dataclass_fields__["temporal_weight"].default)]
    objective = FrameObjective(enc, contents[1], targets, lw, temporal)

    # (1) overhead ratio, alternating the two measurements so machine load hits both alike.
    n_it = args.overhead_iters
    for precision in args.precisions.split(",") if 1 in parts else ():
        bare = VGGEncoder(["relu5_1"], weights, precision=precision).to(device)
        enc_p = VGGEncoder(["relu4_2", *STYLE_LAYERS], weights, precision=precision).to(device)
        objective_p = FrameObjective(enc_p, contents[1], targets, lw, temporal)

        def bare_run():
            for _ in range(n_it):
                x = contents[1].clone().requires_grad_(True)
                bare(x)["relu5_1"].sum().backward()

        def pipeline_run():
            # As the video loop runs a frame: one L-BFGS step per iteration, no final evaluation.
            stylize_frame(objective_p, contents[1], iterations=n_it, evaluate_result=False)

        t_bare, t_pipe = [], []
        for _ in range(args.reps):
            for fn, acc in ((bare_run, t_bare), (pipeline_run, t_pipe)):
                sync(device)
                t = time.perf_counter()
                fn()
                sync(device)
                acc.append((time.perf_counter() - t) / n_it)
        tb, tp = statistics.median(t_bare), statistics.median(t_pipe)
        rows += [(f"bare VGG-19 fwd+bwd to relu5_1, {size[0]}x{size[1]}, {precision}: median / min",
                  f"{tb * 1000:.1f} / {min(t_bare) * 1000:.1f} ms"),
                 (f"pipeline iteration (L-BFGS, content+style+temporal), {precision}: median / min",
                  f"{tp * 1000:.1f} / {min(t_pipe) * 1000:.1f} ms"),
                 (f"(1) overhead ratio, {precision}: of medians / of minimums",
                  f"{tp / tb:.3f} / {min(t_pipe) / min(t_bare):.3f}")]

    if 2 in parts:
        rows += iterations_to_threshold(args, enc, contents, targets, lw, temporal, objective, prev, warped,
                                        back, reliable, device)
    if 3 in parts:
        rows.append(end_to_end(args))
    if 4 in parts:
        if device.type == "cuda":
            rows.append(("(4) peak CUDA memory allocated", f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"))
        rows.append(("(4) peak process RSS", f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"))
    if args.check_size:
        width, height = (int(v) for v in args.check_size.lower().split("x"))
        rows.append(check_size((width, height), frames[1], enc, targets, lw, device))

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"videostyle bench: device {device_name}, weights {weights.weights_id}, torch {torch.__version__}")
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def iterations_to_threshold(args, enc, contents, targets, lw, temporal, objective, prev, warped, back, reliable,
                            device) -> list[tuple[str, str]]:
    """(2): full-size-equivalent iterations to the thresholds, from scratch, warm and with c2f."""
    rows = []
    t = time.perf_counter()
    ref = stylize_frame(objective, contents[1], iterations=args.ref_iters)
    t_ref = time.perf_counter() - t
    converged = min(ref.history)

    def first_below(history, threshold: float, coarse: tuple[int, ...] = ()) -> float:
        """Full-size-equivalent iterations until the loss is below ``threshold``. ``coarse``: the
        iterations run at each coarser level first (coarsest first; one at 1/2^k size costs 1/4^k)."""
        cost, i = 0.0, 0
        for k, n in enumerate(coarse):
            cost += n / 4 ** (len(coarse) - k)
            i += n
        for j, loss in enumerate(history[i:]):
            if loss <= threshold:
                return cost + j + 1
        return float("inf")

    def warm_init(mode: str):
        changed = (source_changed(images.to_uint8(contents[1]), images.to_uint8(contents[0]), back)
                   if mode == "prev-warped-unchanged" else None)
        return initial_image(mode, content=contents[1], previous=prev, warped_previous=warped,
                             mask=mask_tensor(warm_start_mask(mode, back, reliable, changed), device))

    runs = {"from scratch": (t_ref, ref.history, ())}
    for mode in (StyleConfig.init, "prev-warped"):  # the default, and content wherever the flow is unreliable
        t = time.perf_counter()
        warm = stylize_frame(objective, warm_init(mode), iterations=args.ref_iters)
        runs[f"warm start (--init {mode})"] = (time.perf_counter() - t, warm.history, ())
    for octaves in (2, 3):
        levels = len(octave_sizes(*contents[1].shape[-2:], octaves))
        if levels < octaves:
            continue  # too small for this many octaves: the same run as fewer octaves
        for name, init in (("warm", warm_init(StyleConfig.init)), ("from scratch", contents[1])):
            t = time.perf_counter()
            c2f = stylize_coarse_to_fine(enc, contents[1], init, targets, lw, temporal,
                                         iterations=args.ref_iters, coarse_iterations=args.coarse_iters,
                                         octaves=octaves)
            runs[f"{name} + c2f, {octaves} octaves"] = (time.perf_counter() - t, c2f.history,
                                                        (args.coarse_iters,) * (levels - 1))
    rows.append((f"(2) thresholds: the loss from scratch after {args.ref_iters} it (converged) and 1.1x it",
                 f"{converged:.4g} / {1.1 * converged:.4g}"))
    for factor in (1.0, 1.1):
        scratch_it = first_below(ref.history, factor * converged)
        for name, (seconds, history, coarse) in runs.items():
            its = first_below(history, factor * converged, coarse)
            extra = f" ({args.coarse_iters} it per coarse level)" if coarse else ""
            rows.append((f"    {name}{extra}: iterations to {factor:g}x, vs scratch",
                         f"{its:g} ({its / scratch_it:.2f}x)"))
    rows.append(("    seconds for the runs above: " + " / ".join(runs),
                 " / ".join(f"{seconds:.1f}" for seconds, _, _ in runs.values())))
    return rows


def end_to_end(args) -> tuple[str, str]:
    """(3): frames per second of `videostyle stylize` at --quality on the first --frames of --clip."""
    preset = QUALITY_PRESETS[args.quality]
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        trim_clip(Path(args.clip), clip, args.frames)
        cfg = StyleConfig(styles=(args.style,), size=args.size, iters_first=preset["iters_first"],
                          iters=preset["iters"], octaves=preset["octaves"], weights=args.weights,
                          model=args.model)
        t = time.perf_counter()
        summary = stylize_video(clip, Path(tmp) / "out.mp4", cfg, RunOptions(device=args.device, quiet=True))
        total = time.perf_counter() - t
    return (f"(3) end to end, {summary.frames} frames, --quality {args.quality} at {args.size} px "
            f"(iters {cfg.iters_first},{cfg.iters}, octaves {cfg.octaves})",
            f"{summary.frames / total:.3f} frames/s ({total / summary.frames:.2f} s/frame)")


def tiled_child(args) -> dict:
    """One frame of --tiled's size, --tile-iters iterations (a fresh process, so its peak RSS is its own).

    ``--_child tiled``: the memory plan for --budget GB (the process's peak), or --tile-px when given;
    ``--_child untiled``: the whole frame, with --lbfgs-history pairs.
    """
    from videostyle.step import Stylizer
    width, height = (int(v) for v in args.tiled.lower().split("x"))
    cfg = StyleConfig(styles=(args.style,), size=max(width, height), weights=args.weights, model=args.model,
                      lbfgs_history=50 if args._child == "tiled" else args.lbfgs_history)
    frame = images.resize_rgb(read_frames(Path(args.clip), 1)[0], (width, height))
    stylizer = Stylizer(cfg, device=pick_device(args.device), working_size=(width, height))
    if args._child == "untiled":
        stylizer.plan_memory((width, height), tile=10**9)
    else:
        stylizer.plan_memory((width, height), tile=args.tile_px, max_memory=int(args.budget * 2**30))
    content = images.to_tensor(frame, stylizer.device)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    stylizer.stylize(content, content, iterations=args.tile_iters, warm_started=True, evaluate_result=False)
    seconds = (time.perf_counter() - t) / args.tile_iters
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tile = stylizer.tile
    if isinstance(tile, int) and tile >= max(width, height):
        tile = None
    return {"seconds": seconds, "peak_mib": peak / 1024, "before_mib": base / 1024, "tile": tile,
            "grid": tile_grid(height, width, tile) if isinstance(tile, int) else (1, 1), "history": stylizer.history}


def tiled_rows(args) -> list[tuple[str, str]]:
    """(5): the memory plan for --budget GB at --tiled, then the whole frame with the plan's history, each
    in a fresh process; and the model's largest 16:9 frames for --budget."""
    import subprocess
    from videostyle.model import memory
    from videostyle.model.features import VGGEncoder
    from videostyle.model.tiling import BAND_BYTES, TILE_HALO
    rows, results = [], {}
    argv = list(sys.argv[1:])
    for mode in ("tiled", "untiled"):
        extra = ["--lbfgs-history", str(results["tiled"]["history"])] if mode == "untiled" else []
        cmd = [sys.executable, __file__, "--_child", mode, *argv, *extra]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results[mode] = r = json.loads(out)
        how = (f"bands of {BAND_BYTES >> 20} MiB" if r["tile"] == memory.BANDS
               else f"{r['grid'][1]}x{r['grid'][0]} tiles of <= {r['tile']} px, halo {TILE_HALO}" if r["tile"]
               else "whole frame")
        plan = (f", planned for {args.budget:g} GiB" if mode == "tiled" and args.tile_px is None else "")
        rows.append((f"(5) {args.tiled} {mode} ({how}{plan}), {args.tile_iters} it, history {r['history']}",
                     f"{r['seconds']:.2f} s/iteration, peak RSS {r['peak_mib']:.0f} MiB "
                     f"({r['before_mib']:.0f} before the iterations)"))
    rows.append(("(5) tiled / untiled: time per iteration, peak RSS",
                 f"{results['tiled']['seconds'] / results['untiled']['seconds']:.2f}x, "
                 f"{results['tiled']['peak_mib'] / results['untiled']['peak_mib']:.2f}x"))
    encoder = VGGEncoder(["relu4_2", *STYLE_LAYERS], resolve_weights(args.weights, args.model))
    stack = [name for name, _ in encoder.stack.named_children()]
    weights_bytes = sum(p.numel() * p.element_size() for p in encoder.parameters())
    budget = int(args.budget * 2**30)
    for history in (50, 5):
        largest = {}
        for mode in ("untiled", "tiles", "bands"):
            best = None
            for long_edge in range(256, 8192 + 1, 64):
                w, h = long_edge, long_edge * 9 // 16
                try:
                    plan = memory.plan_memory(h, w, stack, budget_bytes=budget, halo=TILE_HALO,
                                              read_layers=encoder.layers, history_size=history,
                                              weights_bytes=weights_bytes, bands=mode == "bands")
                except ValueError:
                    break
                if mode == "untiled" and plan.tile is not None:
                    break
                best = f"{w}x{h}" + (f" (history {plan.history})" if plan.history != history else "")
            largest[mode] = best
        rows.append((f"(5) model: largest 16:9 frame for a {args.budget:g} GiB frame budget, history {history}: "
                     f"untiled / tiles / bands", " / ".join(str(largest[mode]) for mode in largest)))
    return rows


if __name__ == "__main__":
    main()
