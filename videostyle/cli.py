"""Command line: argv -> StyleConfig/RunOptions -> pipeline. No maths here.

Exit status: 0 done, 2 bad input or environment (one line on stderr), 1 internal error,
130 interrupted (finished frames are kept; the same command resumes).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import warnings
from pathlib import Path

from . import __version__
from .config import INITS, INITS_FIRST, OPTIMIZERS, POOLINGS, RunOptions, StyleConfig
from .errors import VideoStyleError

PROG = "videostyle"


def _int_pair(text: str) -> tuple[int, int]:
    """``"500,200"`` -> (500, 200); ``"300"`` -> (300, 300)."""
    parts = [int(p) for p in text.split(",")]
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise argparse.ArgumentTypeError(f"expected N or FIRST,LATER, got {text!r}")


def _float_list(text: str) -> tuple[float, ...]:
    return tuple(float(p) for p in text.split(","))


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(","))


def _layer_weights(text: str) -> tuple[tuple[str, float], ...]:
    """``"relu1_1:1,relu2_1:0.5"`` (weight defaults to 1) -> (("relu1_1", 1.0), ("relu2_1", 0.5))."""
    out = []
    for item in text.split(","):
        name, _, weight = item.partition(":")
        out.append((name.strip(), float(weight) if weight else 1.0))
    return tuple(out)


def _add_style_options(p: argparse.ArgumentParser, *, video: bool) -> None:
    g = p.add_argument_group("style")
    g.add_argument("--style", required=True, help="style image(s), comma-separated")
    g.add_argument("--style-weights", type=_float_list, default=(), help="blend weights, e.g. 0.7,0.3")
    g.add_argument("--size", type=int, default=512, help="long edge of the working resolution, px (default 512)")
    g.add_argument("--style-scale", type=float, default=1.0, help="style image size relative to --size")
    g.add_argument("--iters", type=_int_pair, default=(300, 150),
                   help="optimiser iterations: N, or FIRST,LATER for the first and later frames (default 300,150)")
    g.add_argument("--content-weight", type=float, default=1.0)
    g.add_argument("--style-weight", type=float, default=20.0)
    g.add_argument("--tv-weight", type=float, default=0.0)
    g.add_argument("--content-layers", type=_layer_weights, default=None, help="e.g. relu4_2")
    g.add_argument("--style-layers", type=_layer_weights, default=None,
                   help="e.g. relu1_1:1,relu2_1:1,relu3_1:1,relu4_1:1,relu5_1:1")
    g.add_argument("--pooling", choices=POOLINGS, default="avg")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="lbfgs")
    g.add_argument("--lr", type=float, default=0.02, help="Adam learning rate (pixels in [0,1])")
    g.add_argument("--init-first", choices=INITS_FIRST, default="content", help="init of the first frame")
    g.add_argument("--tol", type=float, default=0.0,
                   help="stop a frame when the loss changes by less than this fraction (0: off)")
    g.add_argument("--weights", default="auto", help="VGG-19 weights: auto|imagenet|untrained|PATH")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N")
    if video:
        t = p.add_argument_group("temporal coherence")
        t.add_argument("--init", choices=INITS, default="prev-warped", help="init of later frames")
        t.add_argument("--temporal-weight", type=float, default=200.0)
        t.add_argument("--flow", default="dis", help="dis|farneback|raft-small|raft-large")
        t.add_argument("--flow-indices", type=_int_list, default=(1,),
                       help="temporal terms to frames t-k, e.g. 1,2,4 (Ruder's long-term loss)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Video style transfer that keeps audio and timing.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    common.add_argument("-v", "--verbose", action="store_true", help="log losses per frame")
    common.add_argument("--debug", action="store_true", help="show tracebacks")

    s = sub.add_parser("stylize", parents=[common], help="stylise a video file")
    s.add_argument("input", help="video file")
    s.add_argument("-o", "--output", help="output video (.mp4, .mov, .mkv); default INPUT_STYLE.mp4")
    _add_style_options(s, video=True)
    e = s.add_argument_group("output")
    e.add_argument("--crf", type=int, default=18, help="H.264 quality, lower is better (default 18)")
    e.add_argument("--preset", default="medium", help="x264 preset (default medium)")
    e.add_argument("--output-size", choices=("source", "working"), default="source",
                   help="encode at the source's size (default) or at the working size")
    e.add_argument("--workdir", help="work dir for resumable frames (default: OUTPUT.videostyle-work)")
    e.add_argument("--restart", action="store_true", help="start over; the old work dir is kept aside")
    e.add_argument("--keep-workdir", action="store_true", help="keep the stylised frames after encoding")
    e.add_argument("--batch-size", type=int, default=1,
                   help="frames journaled together (default 1); a finished batch is never redone")

    r = sub.add_parser("resume", parents=[common], help="resume an interrupted run from its work dir")
    r.add_argument("workdir", help="the work dir of the interrupted run")
    r.add_argument("--device", default=None, help="override the device the run used")

    i = sub.add_parser("image", parents=[common], help="stylise one image")
    i.add_argument("input", help="image file")
    i.add_argument("-o", "--output", help="output image (.png/.jpg); default INPUT_STYLE.png")
    _add_style_options(i, video=False)

    v = sub.add_parser("evaluate", parents=[common], help="temporal warping error and losses of a stylised video")
    v.add_argument("stylised", help="stylised video")
    v.add_argument("--source", required=True, help="the video it was made from")
    v.add_argument("--style", help="style image(s), comma-separated: also report content/style loss per frame")
    v.add_argument("--weights", default="auto", help="VGG-19 weights for the losses: auto|imagenet|untrained|PATH")
    v.add_argument("--device", default="auto")
    v.add_argument("--plot", help="write a PNG plot of the error per frame")
    return parser


def _style_config(args: argparse.Namespace, *, video: bool) -> StyleConfig:
    styles = tuple(s.strip() for s in args.style.split(",") if s.strip())
    kwargs = dict(
        styles=styles, style_weights=args.style_weights, size=args.size, style_scale=args.style_scale,
        iters_first=args.iters[0], iters=args.iters[1], optimizer=args.optimizer, learning_rate=args.lr,
        content_weight=args.content_weight, style_weight=args.style_weight, tv_weight=args.tv_weight,
        pooling=args.pooling, init_first=args.init_first, tol_loss_relative=args.tol,
        weights=args.weights, seed=args.seed)
    if args.content_layers:
        kwargs["content_layers"] = args.content_layers
    if args.style_layers:
        kwargs["style_layers"] = args.style_layers
    if video:
        kwargs.update(init=args.init, temporal_weight=args.temporal_weight, flow=args.flow,
                      flow_offsets=args.flow_indices)
    else:
        kwargs.update(init="content", temporal_weight=0.0)
    for path in styles:
        if not Path(path).is_file():
            raise VideoStyleError(f"style image not found: {path!r}")
    return StyleConfig(**kwargs)


def _default_output(input_path: str, styles: tuple[str, ...], suffix: str) -> str:
    src = Path(input_path)
    return str(src.with_name(f"{src.stem}_{Path(styles[0]).stem}{suffix}"))


def _progress_factory(quiet: bool):
    if quiet:
        return None
    from tqdm import tqdm

    def factory(total, initial):
        return tqdm(total=total, initial=initial, unit="frame", dynamic_ncols=True, file=sys.stderr,
                    smoothing=0.1)
    return factory


def _run(args: argparse.Namespace) -> int:
    from . import pipeline

    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "resume":
        summary = pipeline.resume_video(args.workdir, device=args.device,
                                        progress=_progress_factory(args.quiet))
        _report(summary, args.quiet)
        return 0
    opts = RunOptions(device=args.device, quiet=args.quiet, verbose=args.verbose)
    if args.command == "image":
        cfg = _style_config(args, video=False)
        output = args.output or _default_output(args.input, cfg.styles, ".png")
        losses = pipeline.stylize_image(args.input, output, cfg, opts)
        if not args.quiet:
            print(f"wrote {output} (style loss {losses['style']:.4g}, content loss {losses['content']:.4g})")
        return 0
    cfg = _style_config(args, video=True)
    output = args.output or _default_output(args.input, cfg.styles, ".mp4")
    opts = RunOptions(device=args.device, crf=args.crf, preset=args.preset, output_size=args.output_size,
                      workdir=args.workdir, quiet=args.quiet, verbose=args.verbose, restart=args.restart,
                      keep_workdir=args.keep_workdir, batch_size=args.batch_size)
    args.workdir_shown = args.workdir or str(pipeline.default_workdir(Path(output)))
    summary = pipeline.stylize_video(args.input, output, cfg, opts, progress=_progress_factory(args.quiet))
    _report(summary, args.quiet)
    return 0


def _report(summary, quiet: bool) -> None:
    if not quiet:
        resumed = f", resumed after {summary.resumed_from}" if summary.resumed_from else ""
        print(f"wrote {summary.output}: {summary.frames} frames{resumed}, "
              f"{summary.seconds_per_frame:.2f} s/frame, weights {summary.weights_id}")


def _evaluate(args: argparse.Namespace) -> int:
    from . import evaluate

    styles = tuple(s.strip() for s in args.style.split(",") if s.strip()) if args.style else ()
    result = evaluate.evaluate_frames(evaluate.read_frames(args.stylised), evaluate.read_frames(args.source),
                                      styles=styles, weights=args.weights, device=args.device)
    print(evaluate.format_table(result))
    if args.plot:
        evaluate.write_plot(result.temporal_error, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format=f"{PROG}: %(message)s")
    warnings.showwarning = lambda message, category, *rest: print(
        f"{PROG}: warning: {message}", file=sys.stderr)
    # SIGTERM stops like Ctrl-C: the frame in progress is dropped, finished frames stay journaled.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        return _run(args)
    except KeyboardInterrupt:
        if args.command in ("stylize", "resume"):
            workdir = getattr(args, "workdir_shown", None) or getattr(args, "workdir", None)
            how = f"{PROG} resume {workdir}" if workdir else "the same command"
            print(f"\n{PROG}: interrupted; finished frames are kept. To resume: {how}", file=sys.stderr)
        return 130
    except (VideoStyleError, ValueError) as exc:
        if args.debug:
            raise
        print(f"{PROG}: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
              file=sys.stderr)
        return 2
    except Exception as exc:  # internal error: one line, traceback with --debug
        if args.debug:
            raise
        print(f"{PROG}: internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
