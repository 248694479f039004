"""Command line: argv -> StyleConfig/RunOptions -> chain. No maths here.

Exit status: 0 done, 2 bad input or environment (one line on stderr), 1 internal error,
130 interrupted (finished frames are kept; the same command resumes).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
import warnings
from dataclasses import replace
from pathlib import Path

from videostyle import __version__
from videostyle.config import (BANDS, INITS, INITS_FIRST, MODELS, OPTIMIZERS, POOLINGS, PRECISIONS, QUALITIES,
                               QUALITY_PRESETS, SETTINGS, RunOptions, StyleConfig, help_text)
from videostyle.config import default as config_default
from videostyle.errors import VideoStyleError
from videostyle.paths import check_not_an_input, check_video_path

PROG = "videostyle"
_D = StyleConfig  # its field defaults are the CLI's (chosen in docs/BENCHMARKS.md, docs/TEMPORAL.md)
S, R = StyleConfig, RunOptions  # the settings table's two halves (config.SETTINGS)


def _opt(group, cls, name: str, *, flag: str | None = None, **kwargs):
    """The option of field ``name`` of ``cls`` as the settings table (:data:`videostyle.config.SETTINGS`)
    has it: its flag and help, and the dataclass's default unless ``kwargs`` say otherwise."""
    setting = SETTINGS[cls][name]
    kwargs.setdefault("default", config_default(cls, name))
    if setting.help:
        kwargs.setdefault("help", help_text(cls, name))
    if setting.metavar:
        kwargs.setdefault("metavar", setting.metavar)
    return group.add_argument(flag or setting.flag, **kwargs)


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


def _path_list(text: str | None) -> tuple[str, ...]:
    """``"a.jpg, b.jpg"`` -> ("a.jpg", "b.jpg"); None or empty -> ()."""
    return tuple(p.strip() for p in (text or "").split(",") if p.strip())


def _time_s(text: str) -> float:
    """``SS``, ``MM:SS`` or ``HH:MM:SS(.fff)`` -> seconds (--start, --duration)."""
    from videostyle.media.probe import parse_time
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {text!r}")
    return value


def _tile(text: str) -> int | str:
    """``--tile``: px a side (1 or more), or ``bands``."""
    if text.strip().lower() == BANDS:
        return BANDS
    try:
        return _positive_int(text)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"expected px (1 or more) or {BANDS!r}, got {text!r}") from None


_MEMORY_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _memory_size(text: str) -> int:
    """``4GB``, ``4G``, ``512MB``, ``2.5GiB`` -> bytes (binary units)."""
    number = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = number[-1:] if number[-1:] in _MEMORY_UNITS else ""
    try:
        value = float(number[:-1] if unit else number) * _MEMORY_UNITS.get(unit, 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 4GB or 512MB, got {text!r}") from None
    if not unit or value < 2**20:
        raise argparse.ArgumentTypeError(f"expected a size such as 4GB or 512MB, got {text!r}")
    return int(value)


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(","))


def _layer_weights(text: str) -> tuple[tuple[str, float], ...]:
    """``"relu1_1:1,relu2_1:0.5"`` (weight defaults to 1) -> (("relu1_1", 1.0), ("relu2_1", 0.5))."""
    out = []
    for item in text.split(","):
        name, _, weight = item.partition(":")
        out.append((name.strip(), float(weight) if weight else 1.0))
    return tuple(out)


def _add_style_options(p: argparse.ArgumentParser, *, video: bool, size_flag: str = "--size",
                       device_flag: str = "--device", style_required: bool = True,
                       quality_default: str = "default", size_default: int | None = None,
                       weight_lists: bool = False) -> None:
    """``size_flag``/``device_flag`` rename --size/--device where a subcommand uses those names
    itself (webcam: capture size and camera); the dests stay ``size`` and ``device``.
    ``weight_lists``: --content-weight/--style-weight take comma-separated lists (``sheet``)."""
    g = p.add_argument_group("style")
    g.add_argument("--style", required=style_required, help="style image(s), comma-separated")
    _opt(g, S, "style_weights", type=_float_list)
    g.add_argument("--quality", choices=QUALITIES, default=quality_default,
                   help="preset of size, iterations and octaves: "
                        + "; ".join(f"{name}: {_describe_preset(name)}" for name in QUALITIES)
                        + f" (default {quality_default}; flags given explicitly override it)")
    g.add_argument(size_flag, dest="size", type=int, default=size_default,
                   help="long edge of the working resolution, px (default: "
                        + (f"{size_default})" if size_default else "from --quality)"))
    _opt(g, S, "style_scale", type=float)
    g.add_argument("--iters", type=_int_pair, default=None,
                   help="optimiser iterations: N, or FIRST,LATER for the first and later frames "
                        "(default: from --quality)")
    g.add_argument("--octaves", type=int, default=None,
                   help="coarse-to-fine levels: a frame without a warm start (the first) is optimised at "
                        "1/2, 1/4, ... of the size first (1: full size only; default: from --quality)")
    if weight_lists:
        g.add_argument("--content-weight", type=_float_list, default=(1.0,),
                       help="one value or a list, one sheet column each, e.g. 1,2 (default 1)")
        g.add_argument("--style-weight", type=_float_list, default=(_D.style_weight,),
                       help=f"one value or a list, one sheet column each, e.g. 0.5,1,2 (default {_D.style_weight:g})")
    else:
        _opt(g, S, "content_weight", type=float)
        _opt(g, S, "style_weight", type=float)
    _opt(g, S, "tv_weight", type=float)
    _opt(g, S, "range_weight", type=float)
    _opt(g, S, "content_layers", type=_layer_weights, default=None)
    _opt(g, S, "style_layers", type=_layer_weights, default=None)
    _opt(g, S, "pooling", choices=POOLINGS)
    _opt(g, S, "optimizer", choices=OPTIMIZERS)
    _opt(g, S, "learning_rate", type=float)
    _opt(g, S, "init_first", choices=INITS_FIRST)
    _opt(g, S, "tol_loss_relative", type=float)
    _opt(g, S, "lbfgs_history", type=_positive_int)
    _opt(g, S, "weights")
    _opt(g, S, "model", choices=MODELS)
    _opt(g, S, "seed", type=int)
    _opt(g, R, "device", flag=device_flag, dest="device")
    _opt(g, R, "precision", choices=PRECISIONS)
    _opt(g, R, "max_memory", type=_memory_size)
    _opt(g, R, "tile", type=_tile)
    a = p.add_argument_group("artistic controls")
    _opt(a, S, "preserve_colors", action="store_true")
    _opt(a, S, "mask")
    _opt(a, S, "mask_feather", type=float)
    if video:
        _opt(a, S, "passes", type=int)
        _opt(a, S, "pass_blend", type=float)
        _opt(a, S, "pass_iters", type=int)
    if video:
        t = p.add_argument_group("temporal coherence")
        _opt(t, S, "init", choices=INITS)
        _opt(t, S, "temporal_weight", type=float)
        _opt(t, S, "new_content_style", type=float)
        _opt(t, S, "flow")
        _opt(t, S, "flow_offsets", type=_int_list)


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
    _opt(e, R, "crf", type=int)
    _opt(e, R, "preset")
    _opt(e, R, "output_size", choices=("source", "working"))
    _opt(e, R, "workdir")
    _opt(e, R, "restart", action="store_true")
    _opt(e, R, "keep_workdir", action="store_true")
    _opt(e, R, "batch_size", type=int)
    _opt(e, R, "save_every", type=_non_negative_int)
    c = s.add_argument_group("part of the video")
    _opt(c, R, "start", type=_time_s)
    _opt(c, R, "duration", type=_time_s)
    _add_ray_options(s)

    r = sub.add_parser("resume", parents=[common], help="resume an interrupted run from its work dir")
    r.add_argument("workdir", help="the work dir of the interrupted run")
    r.add_argument("--device", default=None, help="override the device the run used")

    i = sub.add_parser("image", parents=[common], help="stylise one image")
    i.add_argument("input", help="image file")
    i.add_argument("-o", "--output", help="output image (.png/.jpg); default INPUT_STYLE.png")
    _add_style_options(i, video=False)
    _opt(i, R, "save_every", type=_non_negative_int)
    i.add_argument("--output-size", choices=("source", "working"), default="source",
                   help="write at the image's own size (default: the working-size result refined at 2x steps "
                        "up to it, see --refine-iters) or at the working size")
    i.add_argument("--refine-iters", type=_non_negative_int, default=20, metavar="N",
                   help="with --output-size source: iterations at each 2x step up to the image's size "
                        "(default 20; 0: a plain bicubic upscale)")

    pv = sub.add_parser("preview", parents=[common], help="stylise one frame of a video quickly, to tune settings",
                        description="Stylise the frame nearest --at alone (first-frame settings), print the "
                                    "time it took and the `videostyle stylize` command with these settings.")
    pv.add_argument("input", help="video file")
    pv.add_argument("--at", type=float, default=None, help="time of the frame, s (default: the middle)")
    pv.add_argument("-o", "--output", help="output image (.png/.jpg); default INPUT_preview.png")
    _add_style_options(pv, video=False, quality_default="draft")

    sh = sub.add_parser("sheet", parents=[common], help="contact sheet: one frame with each style and weights",
                        description="Render the frame nearest --at with each style (rows) and each "
                                    "(content weight, style weight) combination (columns) into one labelled "
                                    "PNG grid; the first row holds the content frame and the column headers, "
                                    "the first column the style images.")
    sh.add_argument("input", help="video file")
    sh.add_argument("--at", type=float, default=None, help="time of the frame, s (default: the middle)")
    sh.add_argument("-o", "--output", required=True, help="output PNG")
    _add_style_options(sh, video=False, quality_default="draft", size_default=256, weight_lists=True)

    v = sub.add_parser("evaluate", parents=[common], help="temporal warping error and losses of a stylised video")
    v.add_argument("stylised", help="stylised video, or a directory of PNG frames (e.g. a --keep-workdir work dir)")
    v.add_argument("--source", required=True, help="the video it was made from")
    v.add_argument("--style", help="style image(s), comma-separated: also report content/style loss per frame")
    _opt(v, S, "weights", help="weights for the losses: " + help_text(S, "weights"))
    _opt(v, S, "model", choices=MODELS)
    v.add_argument("--device", default="auto")
    v.add_argument("--plot", help="write a PNG plot of the error per frame")

    _add_webcam_parser(sub, common)
    return parser


def _add_ray_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("many machines (Ray, needs videostyle[ray])")
    _opt(g, R, "ray", nargs="?", const="local")
    _opt(g, R, "segment_frames", type=int)
    _opt(g, R, "segment_overlap", type=int)
    _opt(g, R, "ray_cpus", type=int)
    _opt(g, R, "scene_cuts", action=argparse.BooleanOptionalAction)


def _size_wh(text: str) -> tuple[int, int]:
    """``"640x480"`` -> (640, 480)."""
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or not int(width) or not int(height):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 640x480, got {text!r}")
    return int(width), int(height)


def _add_webcam_parser(sub, common: argparse.ArgumentParser) -> None:
    w = sub.add_parser("webcam", parents=[common], help="record from a camera, then stylise the recording",
                       description="Record a V4L2 camera (and microphone) losslessly to NAME.raw.mkv beside "
                                   "the output, then stylise that recording. Ctrl-C stops recording early.")
    w.add_argument("-o", "--output", required=True,
                   help="stylised video (.mp4, .mov, .mkv); the raw recording goes beside it as NAME.raw.mkv")
    c = w.add_argument_group("capture")
    c.add_argument("--device", dest="camera", default="/dev/video0", help="V4L2 camera (default /dev/video0)")
    c.add_argument("--duration", type=float, default=10.0,
                   help="seconds to record (default 10; 0: until Ctrl-C or the input ends)")
    c.add_argument("--size", dest="capture_size", type=_size_wh, default=None,
                   help="capture size WxH, e.g. 640x480 (default: the camera's)")
    c.add_argument("--fps", type=float, default=None, help="capture frame rate (default: the camera's)")
    c.add_argument("--camera-format", default=None,
                   help="camera pixel format, e.g. mjpeg or yuyv422 (default: the camera's)")
    c.add_argument("--audio-device", default="auto",
                   help="microphone: auto (ALSA's default when there is a capture device), none, or an "
                        "ALSA device such as hw:1,0")
    c.add_argument("--record-only", action="store_true",
                   help="only record; stylise later with `videostyle stylize NAME.raw.mkv`")
    c.add_argument("--preview", action="store_true",
                   help="stylise a low-resolution stream live while recording (a quick look, written to "
                        "NAME.preview.mp4 and shown in a window when a display exists)")
    c.add_argument("--preview-size", type=int, default=160, help="preview long edge, px (default 160)")
    c.add_argument("--preview-iters", type=int, default=4, help="preview iterations per frame (default 4)")
    c.add_argument("--input-format", default="v4l2", help=argparse.SUPPRESS)  # tests: lavfi as a fake camera
    c.add_argument("--audio-format", default="alsa", help=argparse.SUPPRESS)  # tests: lavfi as a fake microphone
    _add_style_options(w, video=True, size_flag="--style-size", device_flag="--compute-device",
                       style_required=False)
    e = w.add_argument_group("output")
    e.add_argument("--crf", type=int, default=18, help="H.264 quality, lower is better (default 18)")
    e.add_argument("--preset", default="medium", help="x264 preset (default medium)")
    e.add_argument("--keep-workdir", action="store_true", help="keep the stylised frames after encoding")


def _describe_preset(name: str) -> str:
    preset = QUALITY_PRESETS[name]
    return (f"size {preset['size']}, iters {preset['iters_first']},{preset['iters']}, "
            f"octaves {preset['octaves']}")


def _style_config(args: argparse.Namespace, *, video: bool) -> StyleConfig:
    styles = _path_list(args.style)
    preset = QUALITY_PRESETS[args.quality]
    given = {name: value for name, value in (("size", args.size), ("iters", args.iters),
                                              ("octaves", args.octaves)) if value is not None}
    iters = given.get("iters", (preset["iters_first"], preset["iters"]))
    kwargs = dict(
        styles=styles, style_weights=args.style_weights, size=given.get("size", preset["size"]),
        style_scale=args.style_scale, iters_first=iters[0], iters=iters[1],
        octaves=given.get("octaves", preset["octaves"]), optimizer=args.optimizer, learning_rate=args.lr,
        content_weight=args.content_weight, style_weight=args.style_weight, tv_weight=args.tv_weight,
        range_weight=args.range_weight,
        pooling=args.pooling, init_first=args.init_first, tol_loss_relative=args.tol,
        lbfgs_history=args.lbfgs_history, weights=args.weights, model=args.model, seed=args.seed,
        preserve_colors=args.preserve_colors, mask=args.mask,
        mask_feather=args.mask_feather)
    if args.content_layers:
        kwargs["content_layers"] = args.content_layers
    if args.style_layers:
        kwargs["style_layers"] = args.style_layers
    if video:
        kwargs.update(init=args.init, temporal_weight=args.temporal_weight,
                      new_content_style=args.new_content_style, flow=args.flow,
                      flow_offsets=args.flow_indices, passes=args.passes, pass_blend=args.pass_blend,
                      pass_iters=args.pass_iters)
    else:
        kwargs.update(init="content", temporal_weight=0.0)
    for path in styles:
        if not Path(path).is_file():
            raise VideoStyleError(f"style image not found: {path!r}")
    if args.mask and not Path(args.mask).is_file():
        raise VideoStyleError(f"mask not found: {args.mask!r}")
    return StyleConfig(**kwargs)


def _default_output(input_path: str, styles: tuple[str, ...], suffix: str) -> str:
    src = Path(input_path)
    return str(src.with_name(f"{src.stem}_{Path(styles[0]).stem}{suffix}"))


def _progress_factory(quiet: bool):
    if quiet:
        return None
    from tqdm import tqdm

    class EstimateBar(tqdm):
        """A bar whose total is an estimate: raised to the frames done when the estimate was short (tqdm
        would drop the total and show ``?``)."""

        def update(self, n=1):
            if self.total is not None and self.n + n > self.total:
                self.total = self.n + n
            return super().update(n)

    def factory(total, initial):
        bar_format = _bar_format(total)
        return (tqdm if bar_format is None else EstimateBar)(
            total=total, initial=initial, unit="frame", dynamic_ncols=True, file=sys.stderr, smoothing=0.1,
            bar_format=bar_format)
    return factory


def _iteration_progress(quiet: bool):
    """A factory ``progress(total)`` of bars over optimiser iterations (image, sheet), like stylize's: done,
    seconds per iteration (or iterations per second) and the ETA, on stderr; None with ``-q``."""
    if quiet:
        return None
    from tqdm import tqdm

    def factory(total):
        return tqdm(total=total, unit="it", dynamic_ncols=True, file=sys.stderr, smoothing=0.1)
    return factory


def _bar_format(total) -> str | None:
    """tqdm's own format, with ``~`` before the total and the ETA when the total is an estimate
    (:class:`~videostyle.run.plan.EstimatedCount`: the container states no frame count)."""
    from videostyle.run.plan import EstimatedCount
    if not isinstance(total, EstimatedCount):
        return None
    return "{l_bar}{bar}| {n_fmt}/~{total_fmt} [{elapsed}<~{remaining}, {rate_fmt}{postfix}]"


def _run(args: argparse.Namespace) -> int:
    # torch (seconds to import) only once a frame is to be made: what needs no frame answers first.
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "webcam":
        return _webcam(args)
    if args.command in ("preview", "sheet"):
        return _preview_or_sheet(args)
    if args.command == "resume":
        from videostyle.run import api
        summary = api.resume_video(args.workdir, device=args.device,
                                        progress=_progress_factory(args.quiet))
        _report(summary, args.quiet)
        return 0
    opts = RunOptions(device=args.device, quiet=args.quiet, verbose=args.verbose, precision=args.precision,
                      save_every=args.save_every, tile=args.tile, max_memory=args.max_memory)
    if args.command == "image":
        cfg = _style_config(args, video=False)
        output = args.output or _default_output(args.input, cfg.styles, ".png")
        from videostyle.run import api
        opts = replace(opts, output_size=args.output_size)
        losses = api.stylize_image(args.input, output, cfg, opts, refine_iters=args.refine_iters,
                                   progress=_iteration_progress(args.quiet))
        if not args.quiet:
            print(f"wrote {output} (style loss {losses['style']:.4g}, content loss {losses['content']:.4g})")
        return 0
    cfg = _style_config(args, video=True)
    output = args.output or _default_output(args.input, cfg.styles, ".mp4")
    check_video_path(args.input)  # a missing input answers before torch is imported
    from videostyle.run import api, plan
    opts = RunOptions(device=args.device, crf=args.crf, preset=args.preset, output_size=args.output_size,
                      workdir=args.workdir, quiet=args.quiet, verbose=args.verbose, restart=args.restart,
                      keep_workdir=args.keep_workdir, batch_size=args.batch_size, precision=args.precision,
                      save_every=args.save_every, ray=args.ray, segment_frames=args.segment_frames,
                      segment_overlap=args.segment_overlap, ray_cpus=args.ray_cpus, scene_cuts=args.scene_cuts,
                      tile=args.tile, max_memory=args.max_memory, start=args.start, duration=args.duration)
    args.workdir_shown = args.workdir or str(plan.default_workdir(Path(output)))
    summary = api.stylize_video(args.input, output, cfg, opts, progress=_progress_factory(args.quiet))
    _report(summary, args.quiet)
    return 0


def _report(summary, quiet: bool) -> None:
    if not quiet:
        resumed = f", resumed after {summary.resumed_from}" if summary.resumed_from else ""
        print(f"wrote {summary.output}: {summary.frames} frames{resumed}, "
              f"{summary.seconds_per_frame:.2f} s/frame, weights {summary.weights_id}")
        seams = getattr(summary, "seams", None)  # a --ray run: the seam metric (videostyle.run.distributed)
        if seams is not None:
            print(seams.describe())


def _preview_or_sheet(args: argparse.Namespace) -> int:
    from videostyle.tools import preview

    if args.command == "preview":
        cfg = _style_config(args, video=False)
        output = args.output or str(Path(args.input).with_name(f"{Path(args.input).stem}_preview.png"))
        shot = preview.preview_frame(args.input, output, cfg, at=args.at, device=args.device,
                                     precision=args.precision)
        if not args.quiet:
            print(f"wrote {output}: frame at {shot.time_s:.3f} s stylised in {shot.seconds:.1f} s "
                  f"({cfg.iters_first} iterations at {shot.size[0]}x{shot.size[1]} px)")
            print("to stylise the video with these settings:")
        print(preview.stylize_command(args.input, cfg, output=_default_output(args.input, cfg.styles, ".mp4")))
        return 0
    from videostyle.tools import sheet

    content_weights, style_weights = args.content_weight, args.style_weight
    args.content_weight, args.style_weight = content_weights[0], style_weights[0]
    cfg = _style_config(args, video=False)
    result = sheet.contact_sheet(args.input, args.output, cfg, content_weights=content_weights,
                                 style_weights=style_weights, at=args.at, device=args.device,
                                 precision=args.precision, progress=_iteration_progress(args.quiet))
    if not args.quiet:
        print(f"wrote {args.output}: {result.rows} styles x {result.columns} weight settings, frame at "
              f"{result.time_s:.3f} s, {result.seconds:.1f} s")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from videostyle.tools import evaluate

    styles = _path_list(args.style)
    if args.plot:  # checked before the (long) evaluation, as every command checks its output first
        from videostyle.paths import check_not_an_input
        from videostyle.run.plan import check_image_output
        inputs = [("stylised video", args.stylised), ("source video", args.source),
                  *(("style image", s) for s in styles)]
        if args.weights not in ("auto", "imagenet", "untrained"):
            inputs.append(("weights file", args.weights))
        frames_dir = Path(args.stylised)
        if frames_dir.is_dir():  # a work dir or a directory of frames: any file in it is an input
            inputs += [("stylised frames", p) for p in frames_dir.rglob("*.png")]
        check_image_output(args.plot, inputs=inputs)
    result = evaluate.evaluate_frames(evaluate.read_frames(args.stylised), evaluate.read_frames(args.source),
                                      styles=styles, weights=args.weights, model=args.model,
                                      device=args.device)
    print(evaluate.format_table(result))
    print(evaluate.format_summary(result))
    if args.plot:
        evaluate.write_plot(result.temporal_error, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _webcam(args: argparse.Namespace) -> int:
    """Record (lossless raw clip beside the output), optionally preview live, then stylise offline."""
    from videostyle.cli.webcam import LivePreview, display_available
    from videostyle.media import capture as webcam
    from videostyle.media.encode import check_output_path
    from videostyle.run import api, plan

    output = check_output_path(args.output)
    inputs = [("style image", s) for s in _path_list(args.style)] + [("mask", args.mask)]
    if Path(args.camera).is_file():  # a file played as a camera (tests)
        inputs.append(("camera", args.camera))
    check_not_an_input(output, inputs)
    if args.preview:
        check_not_an_input(output.with_name(f"{output.stem}.preview.mp4"), inputs)
    if not args.style and not args.record_only:
        raise VideoStyleError("webcam needs --style STYLE (or --record-only to just record)")
    cfg = _style_config(args, video=True) if args.style else None
    if args.preview and cfg is None:
        raise VideoStyleError("--preview needs --style STYLE")
    mic, note = webcam.microphone_source(args.audio_device, input_format=args.audio_format)
    camera = webcam.camera_source(args.camera, size=args.capture_size, fps=args.fps,
                                  input_format=args.input_format, pixel_format=args.camera_format,
                                  with_audio=mic is not None)
    raw = webcam.raw_clip_path(output)
    preview = None
    if args.preview:
        show = display_available()
        preview = LivePreview(cfg, device=args.device, long_edge=args.preview_size,
                                     iterations=args.preview_iters, show=show,
                                     output=output.with_name(f"{output.stem}.preview.mp4"))
    started = []

    def on_start() -> None:
        started.append(True)
        if not args.quiet:
            length = f"for {args.duration:g} s" if args.duration else "until Ctrl-C"
            print(f"{PROG}: recording {camera.shown} {length} to {raw} (Ctrl-C stops recording early)",
                  file=sys.stderr)

    terminated = []

    def on_sigterm(signum, frame):  # SIGTERM ends the session; Ctrl-C only ends the recording
        terminated.append(signum)
        raise KeyboardInterrupt

    previous_handler = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        rec = webcam.record(camera, raw, audio=mic, audio_note=note, duration_s=args.duration or None,
                            on_frame=None if args.quiet else _recording_status(args.duration, preview),
                            on_start=on_start, preview=preview)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        stats = preview.close() if preview is not None else None
        if started and not args.quiet:
            print(file=sys.stderr)  # end the status line
    if stats is not None:
        stats = replace(stats, offered_from=rec.frames)
        print(stats.describe())
        print("the preview is a quick low-resolution look; the final quality comes from the offline pass"
              + ("" if args.record_only else ", which starts now"))
    print(f"recorded {raw}: {rec.describe()}")
    if rec.audio_note:
        print(f"{PROG}: note: {rec.audio_note}", file=sys.stderr)
    if rec.stopped_by.startswith("camera error"):
        print(f"{PROG}: warning: recording ended early: {rec.stopped_by}", file=sys.stderr)
    restyle = f"{PROG} stylize {raw} --style {args.style or 'STYLE'} -o {output}"
    if terminated:
        print(f"{PROG}: terminated; the recording is kept. To stylise it: {restyle}", file=sys.stderr)
        return 130
    if args.record_only:
        print(f"to stylise it: {restyle}")
        return 0
    workdir = raw.with_name(raw.name + ".videostyle-work")
    opts = RunOptions(device=args.device, crf=args.crf, preset=args.preset, workdir=str(workdir),
                      quiet=args.quiet, verbose=args.verbose, keep_workdir=args.keep_workdir,
                      precision=args.precision, tile=args.tile, max_memory=args.max_memory)
    try:
        summary = api.stylize_video(raw, output, cfg, opts, progress=_progress_factory(args.quiet))
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; the recording ({raw}) and finished frames are kept. "
              f"To resume: {PROG} resume {workdir}", file=sys.stderr)
        return 130
    _report(summary, args.quiet)
    if not args.quiet:
        print(f"the raw recording stays in {raw}; to stylise it again: {restyle}")
    return 0


def _recording_status(duration: float, preview):
    """``on_frame`` callback printing a status line about once a second of capture (stderr)."""
    next_s = [0.0]

    def on_frame(index: int, time_s: float) -> None:
        if time_s < next_s[0]:
            return
        next_s[0] = time_s + 1.0
        of = f"/{duration:g}" if duration else ""
        fps = preview.live_fps() if preview is not None else None
        shown = f" | preview {fps:.1f} fps" if fps else ""
        print(f"\rrecording {time_s:.0f}{of} s, {index + 1} frames{shown}   ", end="", file=sys.stderr,
              flush=True)
    return on_frame


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format=f"{PROG}: %(message)s")
    warnings.showwarning = lambda message, category, *rest: print(
        f"{PROG}: warning: {message}", file=sys.stderr)
    # SIGTERM stops like Ctrl-C: the frame in progress is dropped, finished frames stay journaled.
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    # SIGINT too, whatever it was: a shell starts background jobs (`cmd &`) with SIGINT ignored, and
    # Python then leaves it ignored, so `kill -INT` did nothing.
    previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
    # FFmpeg's raw lines ("error while decoding MB 0 11 ...") are counted, not shown (unless -v/--debug):
    # our own warnings and errors say what they mean, and the run ends on our line.
    from videostyle.media.probe import FFMPEG_LOG
    libav = logging.getLogger("libav")
    previous_propagate = libav.propagate
    libav.propagate = bool(args.verbose or args.debug)
    FFMPEG_LOG.mark_reported()
    try:
        code = _run(args)
        _ffmpeg_summary(FFMPEG_LOG)
        return code
    except KeyboardInterrupt:
        if args.command in ("stylize", "resume"):
            print(f"\n{PROG}: {_resume_hint(args)}", file=sys.stderr)
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
        print(f"{PROG}: internal error: {type(exc).__name__}: {' '.join(str(exc).split())} "
              f"(rerun with --debug for details)", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        signal.signal(signal.SIGINT, previous_sigint)
        libav.propagate = previous_propagate


def _ffmpeg_summary(counter) -> None:
    """After a run that succeeded: one line for FFmpeg complaints no warning of ours covered."""
    extra = counter.count - counter.reported
    if extra > 0:
        counter.mark_reported()
        print(f"{PROG}: warning: FFmpeg reported {extra} problem{'' if extra == 1 else 's'} with the media "
              f"that did not stop the run (last: {counter.last}); rerun with --verbose to see "
              f"{'it' if extra == 1 else 'them'}", file=sys.stderr)


def _resume_hint(args: argparse.Namespace) -> str:
    """What to say on Ctrl-C / SIGTERM: the exact command that resumes, when there is a work dir."""
    workdir = getattr(args, "workdir_shown", None) or getattr(args, "workdir", None)
    from videostyle.store.workdir import has_manifest  # torch-free
    if not workdir or not has_manifest(workdir):
        return "interrupted before any work was saved; run the same command again to start"
    return f"interrupted; finished frames are kept. To resume: {PROG} resume {shlex.quote(str(workdir))}"


if __name__ == "__main__":
    sys.exit(main())
