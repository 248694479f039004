"""Quality benchmark: content photos x styles at each --quality preset, against a plain Gatys L-BFGS loop.

    python scripts/bench_quality.py [--model vgg16 --weights hed] [--size 256] [--presets draft,default,high]
                                    [--quick] [--photos tubingen,golden_gate] [--styles starry_night,wave]
                                    [--sheet sheet.png] [--json out.json]
    python scripts/bench_quality.py --sweep style_weight=2,5,10,20 [--iters 200] [--save-dir DIR]
    python scripts/bench_quality.py --trace 1000 [--octaves 1]   # convergence of the first frame

Each result is measured with the same encoder (the --model/--weights given; figures name them) as
    style    per layer, MSE(Gram(result), Gram(style)) / MSE(Gram(photo), Gram(style)), averaged over the
             style layers (relu1_1..relu5_1): 1 = no closer to the style than the photo itself
             (videostyle.model.metrics.quality_distances)
    content  mean((F - F_photo)^2) / mean(F_photo^2) at relu4_2: 0 = the photo's features
    seconds  wall time of the stylisation (style targets included), this machine, one process
The reference ("gatys") is the PyTorch tutorial's loop: raw losses (Gram / (C*H*W), MSE), content weight
1, style weight 1e6, torch.optim.LBFGS with its defaults (20 evaluations per step), clamped to [0, 1]
after each step, from the content photo; it runs for the same wall time as our run of the same cell.
All runs are at --size (the presets' iterations and octaves, not their sizes: 512-768 px is too slow on
a CPU), with videostyle's default loss weights unless --sweep changes one.
The contact sheet has one row per (photo, style): photo | style | each preset | gatys at equal time,
with the figures under each picture and the weights in the title.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from videostyle import images  # noqa: E402
from videostyle.config import QUALITY_PRESETS, StyleConfig  # noqa: E402
from videostyle.model.features import VGGEncoder, resolve_weights  # noqa: E402
from videostyle.model.losses import gram  # noqa: E402
from videostyle.model.metrics import quality_distances  # noqa: E402
from videostyle.model.optimise import compute_style_targets  # noqa: E402
from videostyle.step import Stylizer  # noqa: E402
from videostyle.motion.temporal import initial_image  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CONTENT_LAYER = "relu4_2"
FULL_PHOTOS = ("tubingen", "golden_gate", "Green_Landscape--1280x552")
FULL_STYLES = ("starry_night", "wave", "the_scream", "composition_vii")
QUICK_PHOTOS, QUICK_STYLES = ("Green_Landscape--1280x552",), ("starry_night", "wave")  # CC0 photo, public-domain paintings


def find(folder: str, stem: str) -> Path:
    hits = sorted((DATA / folder).glob(stem + ".*")) or sorted((DATA / folder).glob(stem + "*"))
    if not hits:
        raise SystemExit(f"no {folder} image named {stem!r} in {DATA / folder}")
    return hits[0]


def load(path: Path, size: int) -> torch.Tensor:
    rgb = images.load_image(path)
    return images.to_tensor(images.resize_rgb(rgb, images.working_size(rgb.shape[1], rgb.shape[0], size)))


class Judge:
    """The measuring encoder (one for all results) and the style targets per style image."""

    def __init__(self, model: str, weights: str):
        self.weights = resolve_weights(weights, model)
        self.encoder = VGGEncoder([CONTENT_LAYER, *STYLE_LAYERS], self.weights)

    def grams(self, style: torch.Tensor) -> dict:
        return compute_style_targets(self.encoder, [style], [1.0], STYLE_LAYERS).grams

    def __call__(self, image: torch.Tensor, photo: torch.Tensor, grams: dict) -> tuple[float, float]:
        return quality_distances(self.encoder, image, photo, grams, content_layer=CONTENT_LAYER)


def ours(photo_path: Path, style_path: Path, cfg: StyleConfig, *, trace: list | None = None,
         with_losses: bool = False) -> tuple:
    """``videostyle image`` (first-frame settings of ``cfg``): ``(result (1,3,H,W) in [0,1], seconds, history)``,
    and the final weighted loss terms (dict of floats) with ``with_losses``."""
    start = time.perf_counter()
    rgb = images.load_image(photo_path)
    working = images.working_size(rgb.shape[1], rgb.shape[0], cfg.size)
    content = images.to_tensor(images.resize_rgb(rgb, working))
    stylizer = Stylizer(cfg, device=torch.device("cpu"), working_size=working, colour_reference=content)
    init = initial_image(cfg.init_first, content=content, generator=torch.Generator().manual_seed(cfg.seed))
    result = stylizer.stylize(content, init, iterations=cfg.iters_first)
    seconds = time.perf_counter() - start
    if with_losses:
        return result.image, seconds, result.history, result.losses
    return result.image, seconds, result.history


def gatys_reference(encoder: VGGEncoder, photo: torch.Tensor, style: torch.Tensor, seconds: float
                    ) -> tuple[torch.Tensor, int]:
    """The PyTorch tutorial's loop for ``seconds`` of wall time (see module docstring); returns
    ``(result (1,3,H,W) in [0,1], evaluations)``."""
    start = time.perf_counter()
    with torch.no_grad():
        target_c = encoder(photo)[CONTENT_LAYER]
        target_g = {layer: gram(f) for layer, f in encoder(style).items() if layer in STYLE_LAYERS}
    x = photo.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x])
    evaluations = [0]

    def closure():
        with torch.no_grad():
            x.clamp_(0, 1)
        opt.zero_grad()
        feats = encoder(x)
        loss = torch.nn.functional.mse_loss(feats[CONTENT_LAYER], target_c)
        loss = loss + 1e6 * sum(torch.nn.functional.mse_loss(gram(feats[layer]), g) for layer, g in target_g.items())
        loss.backward()
        evaluations[0] += 1
        return loss

    while time.perf_counter() - start < seconds:
        opt.step(closure)
    with torch.no_grad():
        x.clamp_(0, 1)
    return x.detach(), evaluations[0]


def _typed(name: str, text: str):
    field = {f.name: f for f in dataclasses.fields(StyleConfig)}[name]
    return {"float": float, "int": int}.get(str(field.type), str)(text)


def base_config(args, style_path: Path, **overrides) -> StyleConfig:
    fixed = dict(item.split("=", 1) for item in args.set.split(";") if item) if args.set else {}
    kwargs = {name: _typed(name, text) for name, text in fixed.items()}
    kwargs.update(overrides)
    return StyleConfig(styles=(str(style_path),), size=args.size, weights=args.weights, model=args.model,
                       **kwargs)


def run_grid(args, judge: Judge) -> list[dict]:
    rows = []
    photos, styles = args.photos.split(","), args.styles.split(",")
    presets = args.presets.split(",")
    for photo_name in photos:
        photo_path = find("content", photo_name)
        for style_name in styles:
            style_path = find("styles", style_name)
            for preset in presets:
                p = QUALITY_PRESETS[preset]
                cfg = base_config(args, style_path, iters_first=p["iters_first"], iters=p["iters"],
                                  octaves=p["octaves"])
                image, seconds, _ = ours(photo_path, style_path, cfg)
                photo = load(photo_path, args.size)
                style = load(style_path, args.size)
                grams = judge.grams(style)
                s, c = judge(image, photo, grams)
                rows.append(dict(photo=photo_name, style=style_name, run=preset, style_distance=s,
                                 content_distance=c, seconds=seconds, iters=p["iters_first"],
                                 octaves=p["octaves"], image=image))
                print(f"{photo_name:>12} {style_name:>14} {preset:>8}  style {s:.3f}  content {c:.3f}  "
                      f"{seconds:6.1f} s", file=sys.stderr, flush=True)
                if preset == args.reference_preset:
                    ref, evals = gatys_reference(judge.encoder, photo, style, seconds)
                    s, c = judge(ref, photo, grams)
                    rows.append(dict(photo=photo_name, style=style_name, run=f"gatys@{preset}",
                                     style_distance=s, content_distance=c, seconds=seconds, iters=evals,
                                     octaves=1, image=ref))
                    print(f"{photo_name:>12} {style_name:>14} {'gatys':>8}  style {s:.3f}  content {c:.3f}  "
                          f"{seconds:6.1f} s ({evals} evaluations)", file=sys.stderr, flush=True)
    return rows


def print_table(rows: list[dict], label: str) -> None:
    print(f"weights: {label}")
    print(f"{'photo':>12} {'style':>14} {'run':>16} {'iters':>6} {'style dist':>10} {'content dist':>12} {'s':>7}")
    for r in rows:
        print(f"{r['photo']:>12} {r['style']:>14} {r['run']:>16} {r['iters']:>6} {r['style_distance']:>10.3f} "
              f"{r['content_distance']:>12.3f} {r['seconds']:>7.1f}")
    runs = list(dict.fromkeys(r["run"] for r in rows))
    print("means:")
    for run in runs:
        sel = [r for r in rows if r["run"] == run]
        print(f"{run:>16}  style {np.mean([r['style_distance'] for r in sel]):.3f}  content "
              f"{np.mean([r['content_distance'] for r in sel]):.3f}  {np.mean([r['seconds'] for r in sel]):.1f} s")


def contact_sheet(rows: list[dict], path: Path, label: str, args, tile: int = 192) -> None:
    """One row per (photo, style): photo | style | each run; figures under each tile; title names the weights."""
    keys = list(dict.fromkeys((r["photo"], r["style"]) for r in rows))
    runs = list(dict.fromkeys(r["run"] for r in rows))
    cols = 2 + len(runs)
    text_h, title_h = 28, 36
    sheet = Image.new("RGB", (cols * tile, title_h + len(keys) * (tile + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 4), f"videostyle {', '.join(runs)} at {args.size} px; weights: {label}", fill="black")
    draw.text((6, 18), "style = per-layer Gram distance / photo's own (lower = more style); "
                       "content = relu4_2 distance (lower = more photo)", fill="black")

    def put(img: torch.Tensor | Path, col: int, row: int, caption: str) -> None:
        if isinstance(img, Path):
            pic = Image.open(img).convert("RGB")
        else:
            pic = Image.fromarray(images.to_uint8(img))
        pic.thumbnail((tile, tile))
        y = title_h + row * (tile + text_h)
        sheet.paste(pic, (col * tile + (tile - pic.width) // 2, y + (tile - pic.height) // 2))
        draw.text((col * tile + 4, y + tile + 2), caption, fill="black")

    for row, (photo, style) in enumerate(keys):
        put(find("content", photo), 0, row, photo)
        put(find("styles", style), 1, row, style)
        for col, run in enumerate(runs, start=2):
            r = next(r for r in rows if (r["photo"], r["style"], r["run"]) == (photo, style, run))
            put(r["image"], col, row, f"{run} {r['iters']} it\nst {r['style_distance']:.2f} ct "
                                      f"{r['content_distance']:.2f} {r['seconds']:.0f}s")
    sheet.save(path)
    print(f"wrote {path}", file=sys.stderr)


def sweep(args, judge: Judge) -> None:
    """One setting over several values, first frame only, at --iters/--octaves: distances, loss parts, images."""
    name, _, values = args.sweep.partition("=")
    photo_path, style_path = find("content", args.photos.split(",")[0]), find("styles", args.styles.split(",")[0])
    photo, style = load(photo_path, args.size), load(style_path, args.size)
    grams = judge.grams(style)
    print(f"weights: {judge.weights.label}; {photo_path.stem} x {style_path.stem} at {args.size} px, "
          f"{args.iters} iterations, octaves {args.octaves}, settings {args.set or 'defaults'}")
    print(f"{name:>16} {'style dist':>10} {'content dist':>12} {'final loss':>10} {'range term':>10} "
          f"{'s':>6}")
    for text in values.split(","):
        value = _typed(name, text)
        # The swept field wins over --iters/--octaves (so iters_first and octaves can be swept too).
        overrides = dict(iters_first=args.iters, octaves=args.octaves)
        overrides[name] = value
        cfg = base_config(args, style_path, **overrides)
        image, seconds, history, parts = ours(photo_path, style_path, cfg, with_losses=True)
        s, c = judge(image, photo, grams)  # of the clamped result, as written
        # final loss: the optimiser's own, before the final clamp; range term: its weighted out-of-range part.
        print(f"{text:>16} {s:>10.3f} {c:>12.3f} {history[-1] if history else float('nan'):>10.4f} "
              f"{parts.get('range', 0.0):>10.2e} {seconds:>6.1f}", flush=True)
        if args.save_dir:
            Path(args.save_dir).mkdir(parents=True, exist_ok=True)
            tag = (args.set or "").replace(";", "_").replace("=", "")
            images.save_image(images.to_uint8(image), Path(args.save_dir) / f"{photo_path.stem}_{style_path.stem}_"
                                                                              f"{tag}_{name}_{text}.png")


def _report_trace(history: list[float], what: str) -> None:
    final = history[-1]
    print(f"{what}: final loss {final:.4f} after {len(history)} iterations")
    for pct in (10, 5, 2, 1):
        it = next(i + 1 for i, v in enumerate(history) if all(h <= final * (1 + pct / 100) for h in history[i:]))
        print(f"  within {pct:>2}% of the {len(history)}-iteration loss from iteration {it}")
    for it in (10, 20, 30, 40, 60, 80, 100, 150, 200, 300, 400, 600, 800):
        if it <= len(history):
            print(f"  iteration {it:>4}: {history[it - 1] / final:.3f} x final")


def trace(args, judge: Judge) -> None:
    """Loss per iteration of the first frame up to --trace iterations: where it comes within 10/5/2/1%.
    With --trace-later N, then a later frame: the photo shifted 2 px right and 1 px down (exact flow), warm
    started from the first frame's result shifted the same way, with the temporal term (mask: inside the
    frame), N iterations."""
    from videostyle.model.optimise import FrameObjective, TemporalTerm, stylize_frame

    photo_path, style_path = find("content", args.photos.split(",")[0]), find("styles", args.styles.split(",")[0])
    cfg = base_config(args, style_path, iters_first=args.trace, octaves=args.octaves)
    start = time.perf_counter()
    first, seconds, history = ours(photo_path, style_path, cfg)
    print(f"weights: {judge.weights.label}; {photo_path.stem} x {style_path.stem} at {args.size} px, octaves "
          f"{args.octaves} (coarse octaves not counted), settings {args.set or 'defaults'}; {seconds:.0f} s")
    _report_trace(history[-args.trace:], "first frame (content init)")
    if not args.trace_later:
        return
    rgb = images.load_image(photo_path)
    working = images.working_size(rgb.shape[1], rgb.shape[0], cfg.size)
    content0 = images.to_tensor(images.resize_rgb(rgb, working))
    shift = lambda x: torch.roll(x, shifts=(1, 2), dims=(-2, -1))  # noqa: E731
    content1 = shift(content0)
    mask = torch.ones_like(content0[:, :1])
    mask[..., :1, :] = 0
    mask[..., :, :2] = 0
    warped = shift(first) * mask + content1 * (1 - mask)  # prev-warped-inside: content where the flow leaves
    stylizer = Stylizer(cfg, device=torch.device("cpu"), working_size=working)
    term = TemporalTerm(warped, mask, cfg.temporal_weight)
    objective = FrameObjective(stylizer.encoder, content1, stylizer.targets, stylizer.loss_weights, (term,))
    later = stylize_frame(objective, warped, iterations=args.trace_later)
    _report_trace(later.history, f"later frame (warm start, temporal weight {cfg.temporal_weight:g})")
    print(f"total {time.perf_counter() - start:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vgg16", help="vgg19|vgg16 (default vgg16)")
    ap.add_argument("--weights", default="hed", help="auto|imagenet|untrained|hed|PATH (default hed)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--presets", default=",".join(QUALITY_PRESETS))
    ap.add_argument("--reference-preset", default="default", help="the preset whose time the gatys loop gets")
    ap.add_argument("--quick", action="store_true", help=f"photos {QUICK_PHOTOS} x styles {QUICK_STYLES}")
    ap.add_argument("--photos", default=None, help=f"comma-separated stems (default {','.join(FULL_PHOTOS)})")
    ap.add_argument("--styles", default=None, help=f"comma-separated stems (default {','.join(FULL_STYLES)})")
    ap.add_argument("--sheet", help="write the contact sheet PNG here")
    ap.add_argument("--json", help="write the rows (without images) as JSON here")
    ap.add_argument("--sweep", help="NAME=V1,V2,...: a StyleConfig field over values (first frame only)")
    ap.add_argument("--trace", type=int, help="loss trace of the first frame over this many iterations")
    ap.add_argument("--trace-later", type=int, default=0, help="--trace: then a warm-started later frame, N iterations")
    ap.add_argument("--iters", type=int, default=200, help="--sweep: iterations (default 200)")
    ap.add_argument("--octaves", type=int, default=1, help="--sweep/--trace: octaves (default 1)")
    ap.add_argument("--save-dir", help="--sweep: save each result here")
    ap.add_argument("--set", help="NAME=V;NAME=V: StyleConfig fields for every run (e.g. style_weight=1;tv_weight=5)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    args = ap.parse_args()
    args.photos = args.photos or ",".join(QUICK_PHOTOS if args.quick else FULL_PHOTOS)
    args.styles = args.styles or ",".join(QUICK_STYLES if args.quick else FULL_STYLES)
    if args.threads:
        torch.set_num_threads(args.threads)
    judge = Judge(args.model, args.weights)
    if args.sweep:
        return sweep(args, judge)
    if args.trace:
        return trace(args, judge)
    rows = run_grid(args, judge)
    print_table(rows, judge.weights.label)
    if args.sheet:
        contact_sheet(rows, Path(args.sheet), judge.weights.label, args)
    if args.json:
        Path(args.json).write_text(json.dumps([{k: v for k, v in r.items() if k != "image"} for r in rows],
                                              indent=1))


if __name__ == "__main__":
    main()
