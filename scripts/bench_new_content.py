"""New content entering the frame: does it get stylised like the rest? (issue 18, item 5)

    python scripts/bench_new_content.py [--size 192] [--frames 12] [--speed 6] [--iters 300,40]
                                        [--variants "now:;more iterations:iters=120"]

A camera pans right over a wide photo (--photo, Green_Landscape by default) at --speed px per frame, so
every frame a strip of --speed px of scenery enters at the right edge and nothing else changes (the
exact flow is a shift; DIS finds it). Each variant stylises the clip with the real pipeline
(`stylize_video`, trained features by default). On the last frame, two strips as wide as the scenery
that entered during the last --age frames are measured:
    new    the right edge: scenery at most --age frames old (warm-started from the content, then
           --iters LATER iterations each frame)
    old    the left edge: scenery present since the first frame (its warm start carried the style)
Each strip's style distance is that of the crop alone (per-layer Gram distance to the style, relative
to the photo crop's own, as scripts/bench_quality.py; 1 = photo, 0 = style), with the crop of the
source frame as the photo. "new/old" above 1 means the entering strip stays nearer the photo. The
first frame (optimised from scratch with --iters FIRST) gives the same ratio for a frame that had no
warm start: the row "first frame" is what "new/old" should approach. "painted new/old" is the mean
absolute pixel difference from the photo of the new strip over the old one's: under 1, the new strip
is nearer the photo (a fine grid over the photo's colours scores a low Gram distance but shows here).

With --clip PATH (issue 18, item 6: moving things smear), the variants stylise that real clip instead
and each row gives, over its frames, the mean style distance and content distance (relu4_2) of the
whole frame against its source frame, and E (the temporal warping error, `videostyle evaluate`'s
measure, on the lossless frames); --save writes frames --show of each variant beside the source.
A smear (a moving object's stylised pixels carried into the scenery it uncovers) shows as a higher
content distance: those pixels look like the object, not like what is there now.

Variants set StyleConfig fields (`init=prev-warped-inside`, `new_content_style=0` for the settings before
session 7) or trial levers (`guess`, `extra`, `local`: session 6's, docs/BENCHMARKS.md "New content").

Weights default to the trained VGG-16 (HED fine-tune of ImageNet VGG-16) of scripts/trained_weights.py.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_temporal import work_frames, write_clip  # noqa: E402

from videostyle import images  # noqa: E402
from videostyle.config import RunOptions, StyleConfig  # noqa: E402
from videostyle.model.features import VGGEncoder, resolve_weights  # noqa: E402
from videostyle.model.metrics import quality_distances  # noqa: E402
from videostyle.model.optimise import compute_style_targets  # noqa: E402
from videostyle.run.api import stylize_video  # noqa: E402
from videostyle.run.passes import last_pass_frames  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
STYLE_LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]


def pan_clip(photo: Path, size: int, frames: int, speed: int) -> list[np.ndarray]:
    """``frames`` ``(H, W, 3)`` uint8 windows of ``photo`` (resized to H = 2/3 of ``size``), the window
    ``size`` px wide and moving ``speed`` px right per frame."""
    rgb = images.load_image(photo)
    height = (size * 2 // 3) // 2 * 2
    width_needed = size + speed * (frames - 1)
    scale = height / rgb.shape[0]
    if rgb.shape[1] * scale < width_needed:
        raise SystemExit(f"{photo.name} is too narrow for {frames} frames at {speed} px per frame")
    big = images.resize_rgb(rgb, (int(round(rgb.shape[1] * scale)), height))
    return [np.ascontiguousarray(big[:, t * speed:t * speed + size]) for t in range(frames)]


def strip_distances(encoder, grams, stylised: np.ndarray, source: np.ndarray, width: int) -> tuple[float, float]:
    """Style distance of the right and the left ``width`` px strips of ``stylised`` (uint8 ``(H, W, 3)``),
    each against the same strip of ``source``."""
    out = []
    for cols in (slice(stylised.shape[1] - width, None), slice(0, width)):
        s, _ = quality_distances(encoder, images.to_tensor(stylised[:, cols]), images.to_tensor(source[:, cols]),
                                 grams, content_layer="relu4_2")
        out.append(s)
    return out[0], out[1]


def strip_change(stylised: np.ndarray, source: np.ndarray, width: int) -> tuple[float, float]:
    """How far the right and the left ``width`` px strips of ``stylised`` lie from the photo: the mean
    absolute difference from ``source`` (uint8 ``(H, W, 3)``), in [0, 255]. A strip left photo-like
    has a small one; the Gram distance misses that when the strip is a fine grid (see the module)."""
    diff = np.abs(stylised.astype(np.float32) - source.astype(np.float32))
    return float(diff[:, -width:].mean()), float(diff[:, :width].mean())


LEVERS = ("guess", "extra", "local")


def entering_box(mask: torch.Tensor, *, min_side: int = 64, pad: int = 16) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)``: the box around the pixels of ``mask`` ``(1, 1, H, W)`` that are 0, grown by
    ``pad`` px and to at least ``min_side`` px a side (within the frame); None when there are none."""
    ys, xs = torch.nonzero(mask[0, 0] < 0.5, as_tuple=True)
    if ys.numel() == 0:
        return None
    h, w = mask.shape[-2:]

    def span(lo: int, hi: int, n: int) -> tuple[int, int]:
        lo, hi = max(0, lo - pad), min(n, hi + pad)
        side = min(max(min_side, hi - lo), n)
        lo = min(max(0, (lo + hi) // 2 - side // 2), n - side)
        return lo, lo + side

    (y0, y1), (x0, x1) = span(int(ys.min()), int(ys.max()) + 1, h), span(int(xs.min()), int(xs.max()) + 1, w)
    return y0, y1, x0, x1


def entering_guess(content: torch.Tensor, warped_previous: torch.Tensor, mask: torch.Tensor, *,
                   sigma: float | None = None) -> torch.Tensor:
    """A stylised guess for the pixels a warm start cannot take from the previous output (``mask`` 0:
    scenery entering at an edge): the content plus the stylisation's local colour shift, i.e. the
    residual ``warped_previous - content`` where ``mask`` is 1, spread into the gaps by normalised
    Gaussian convolution (``sigma`` px, default 1/8 of the short edge). ``(1, 3, H, W)`` in [0, 1].

    Starting entering scenery from the bare content leaves it photo-like for many frames: it gets only
    the later-frame iterations, and from the next frame on the temporal term holds it where it is.
    """
    h, w = content.shape[-2:]
    sigma = sigma if sigma is not None else max(1.0, min(h, w) / 8)
    radius = int(3 * sigma)
    x = torch.arange(-radius, radius + 1, device=content.device, dtype=content.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()

    def blur(image: torch.Tensor) -> torch.Tensor:  # separable, zero outside the frame
        c = image.shape[1]
        out = torch.nn.functional.conv2d(image, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1),
                                         padding=(0, radius), groups=c)
        return torch.nn.functional.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1),
                                          padding=(radius, 0), groups=c)

    residual = (warped_previous - content) * mask
    weight = blur(mask)
    # Far from any warm pixel (weight ~ 0) the frame's mean shift stands in.
    mean_shift = residual.sum(dim=(2, 3), keepdim=True) / mask.sum().clamp_min(1.0)
    shift = torch.where(weight > 1e-3, blur(residual) / weight.clamp_min(1e-3), mean_shift)
    guess = (content + shift).clamp(0.0, 1.0)
    return mask * warped_previous + (1 - mask) * guess


class LocalStyle:
    """The frame objective plus the same style term on the box around the entering pixels alone: the
    whole frame's Gram matrices are already near the style's, so a strip of a few % gets almost no
    style gradient from them."""

    def __init__(self, objective, box):
        self.objective, self.box = objective, box

    def __call__(self, image):
        from videostyle.model import losses
        total, parts = self.objective(image)
        y0, y1, x0, x1 = self.box
        o = self.objective
        feats = o.encoder(image[..., y0:y1, x0:x1])
        local = sum(lw * losses.style_loss(feats[layer], o.targets.grams[layer], o.targets.powers[layer])
                    for layer, lw in o.weights.style_layers.items())
        parts = dict(parts, local_style=o.weights.style * local)
        return total + parts["local_style"], parts

    def loss_and_gradient(self, image):
        total, parts = self(image)
        total.backward()
        return total.detach(), {k: v.detach() for k, v in parts.items()}

    def loss(self, image):
        with torch.no_grad():
            return self(image)


@contextlib.contextmanager
def trial_levers(levers: set):
    """Levers on trial, patched into the pipeline for one run: ``guess`` (entering pixels start from
    :func:`videostyle.temporal.entering_guess`), ``extra`` (a frame whose share s of pixels starts from
    the content gets s x iters_first more iterations)."""
    import videostyle.run.chain as chain
    import videostyle.step as step
    saved = chain.initial_image, step.Stylizer.stylize
    share = [0.0]
    box = [None]

    def initial_image(mode, *, content, previous=None, warped_previous=None, mask=None, generator=None):
        if mode.startswith("prev-warped") and mask is not None and warped_previous is not None:
            share[0] = 1.0 - float(mask.mean())
            box[0] = entering_box(mask)
            if "guess" in levers:
                return entering_guess(content, warped_previous, mask)
        return saved[0](mode, content=content, previous=previous, warped_previous=warped_previous, mask=mask,
                        generator=generator)

    def stylize(self, content, init, *, iterations, warm_started=False, **kw):
        if "extra" in levers and warm_started:
            iterations += round(share[0] * self.cfg.iters_first)
        if "local" in levers and warm_started and box[0] is not None:
            y0, y1, x0, x1 = box[0]
            base = self.make_objective

            def make_objective(encoder, content, targets, weights, temporal=(), fresh=None):
                objective = base(encoder, content, targets, weights, temporal, fresh)
                return LocalStyle(objective, (y0, y1, x0, x1))

            self.make_objective = make_objective
            try:
                return saved[1](self, content, init, iterations=iterations, warm_started=warm_started, **kw)
            finally:
                del self.make_objective
        return saved[1](self, content, init, iterations=iterations, warm_started=warm_started, **kw)

    chain.initial_image, step.Stylizer.stylize = initial_image, stylize
    try:
        yield
    finally:
        chain.initial_image, step.Stylizer.stylize = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=192, help="frame width = working size, px")
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--speed", type=int, default=6, help="pan, px per frame")
    ap.add_argument("--age", type=int, default=6, help="the new strip: scenery that entered in the last N frames")
    ap.add_argument("--iters", default="300,40", help="FIRST,LATER")
    ap.add_argument("--photo", default=str(DATA / "content" / "Green_Landscape--1280x552.jpg"))
    ap.add_argument("--style", default=str(DATA / "styles" / "starry_night.jpg"))
    ap.add_argument("--model", default="vgg16")
    ap.add_argument("--weights", default="hed")
    ap.add_argument("--variants", default="now:",
                    help="NAME:FIELD=V,FIELD=V;NAME:... StyleConfig fields per variant (default: the defaults)")
    ap.add_argument("--clip", help="a real clip instead of the pan (the occlusion mode, above)")
    ap.add_argument("--show", default="0,8,16,24", help="--clip --save: which frames to save")
    ap.add_argument("--save", help="write each variant's last frame beside its source here (PNG)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    first, later = (int(v) for v in args.iters.split(","))
    width = args.speed * args.age

    weights = resolve_weights(args.weights, args.model)
    encoder = VGGEncoder(["relu4_2", *STYLE_LAYERS], weights)
    grams = style_grams(encoder, Path(args.style), args.size)
    if args.clip:
        return real_clip(args, encoder, grams, weights, first, later)
    frames = pan_clip(Path(args.photo), args.size, args.frames, args.speed)
    print(f"weights: {weights.label}; {Path(args.photo).stem} x {Path(args.style).stem}, "
          f"{frames[0].shape[1]}x{frames[0].shape[0]} px, {args.frames} frames panning {args.speed} px/frame, "
          f"iterations {first},{later}; strips {width} px (the new one: scenery <= {args.age} frames old)")
    print(f"{'variant':>24} {'new':>7} {'old':>7} {'new/old':>8} {'first frame new/old':>20} "
          f"{'painted new/old':>16} {'s':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "pan.mp4"
        write_clip(frames, clip)
        source = [images.to_uint8(images.to_tensor(f)) for f in frames]
        for spec in args.variants.split(";"):
            name, cfg, levers = variant_config(spec, args, first, later)
            workdir = Path(tmp) / f"work_{len(name)}_{abs(hash(spec))}"
            start = time.perf_counter()
            with trial_levers(levers):
                stylize_video(clip, Path(tmp) / "out.mp4", cfg,
                              RunOptions(workdir=str(workdir), keep_workdir=True, quiet=True, output_size="working"))
            seconds = time.perf_counter() - start
            out = last_pass_frames(workdir) or work_frames(workdir)  # --passes: the last pass's
            new, old = strip_distances(encoder, grams, out[-1], source[-1], width)
            f_new, f_old = strip_distances(encoder, grams, out[0], source[0], width)
            painted_new, painted_old = strip_change(out[-1], source[-1], width)
            print(f"{name:>24} {new:>7.3f} {old:>7.3f} {new / old:>8.2f} {f_new / f_old:>20.2f} "
                  f"{painted_new / painted_old:>16.2f} {seconds:>6.0f}",
                  flush=True)
            if args.save:
                Path(args.save).mkdir(parents=True, exist_ok=True)
                row = np.concatenate([source[-1], out[-1]], axis=1)
                images.save_image(row, Path(args.save) / f"new_content_{name.replace(' ', '_')}.png")


def variant_config(spec: str, args, first: int, later: int) -> tuple[str, StyleConfig, set]:
    """``NAME:FIELD=V,...`` -> (name, config, levers)."""
    name, _, fields = spec.partition(":")
    overrides = dict(size=args.size, iters_first=first, iters=later, octaves=1, model=args.model,
                     weights=args.weights)  # a variant's fields win
    levers = set()
    for item in filter(None, fields.split(",")):
        key, _, text = item.partition("=")
        if key in LEVERS:
            levers.add(key)
            continue
        default = getattr(StyleConfig(styles=("x",)), key)
        overrides[key] = type(default)(text) if default is not None else text
    return name, StyleConfig(styles=(args.style,), **overrides), levers


def real_clip(args, encoder, grams: dict, weights, first: int, later: int) -> None:
    from videostyle.model.metrics import temporal_warping_error
    from videostyle.tools.evaluate import read_frames

    print(f"weights: {weights.label}; {Path(args.clip).name} x {Path(args.style).stem} at {args.size} px, "
          f"iterations {first},{later}")
    print(f"{'variant':>24} {'style':>7} {'content':>8} {'E':>9} {'s':>6}")
    source = read_frames(args.clip)
    source = [images.resize_rgb(f, images.working_size(f.shape[1], f.shape[0], args.size)) for f in source]
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.variants.split(";"):
            name, cfg, levers = variant_config(spec, args, first, later)
            workdir = Path(tmp) / f"work_{abs(hash(spec))}"
            start = time.perf_counter()
            with trial_levers(levers):
                stylize_video(args.clip, Path(tmp) / "out.mp4", cfg,
                              RunOptions(workdir=str(workdir), keep_workdir=True, quiet=True, output_size="working"))
            seconds = time.perf_counter() - start
            out = last_pass_frames(workdir) or work_frames(workdir)  # --passes: the last pass's
            dists = [quality_distances(encoder, images.to_tensor(o), images.to_tensor(src), grams) for o, src in
                     zip(out, source)]
            e = float(np.nanmean(temporal_warping_error(out, source)))
            print(f"{name:>24} {np.mean([d[0] for d in dists]):>7.3f} {np.mean([d[1] for d in dists]):>8.3f} "
                  f"{e:>9.2e} {seconds:>6.0f}", flush=True)
            if args.save:
                Path(args.save).mkdir(parents=True, exist_ok=True)
                shown = [int(v) for v in args.show.split(",") if int(v) < len(out)]
                row = np.concatenate([np.concatenate([source[i], out[i]], axis=0) for i in shown], axis=1)
                images.save_image(row, Path(args.save) / f"{Path(args.clip).stem}_{name.replace(' ', '_')}.png")


def style_grams(encoder, path: Path, size: int) -> dict:
    """The style image's Gram matrices ``{layer: (1, C, C)}`` at a long edge of ``size`` px, as a frame's."""
    rgb = images.load_image(path)
    style = images.to_tensor(images.resize_rgb(rgb, images.working_size(rgb.shape[1], rgb.shape[0], size)))
    return compute_style_targets(encoder, [style], [1.0], STYLE_LAYERS).grams


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main()
