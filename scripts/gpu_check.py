"""The prepared GPU check: one command, at most 8 minutes on one H100/H200, a Markdown and a JSON report.

    python scripts/gpu_check.py --out DIR [--smoke] [--budget 450] [--model vgg16 --weights PATH]
                                [--style PATH] [--clips a.mp4,b.mp4] [--sections env,tests,speed,quality,memory,levers,e2e]

Sections (each writes its rows into DIR/gpu_check.md and DIR/gpu_check.json as soon as it ends, so a
run cut short still leaves what it measured):
    env      device name, driver, torch / CUDA / cuDNN versions;
    tests    ``pytest -m cuda`` (the CPU-vs-CUDA equality tests);
    speed    seconds per iteration at 1280x720 and 1920x1080 for fp32, bf16 and fp16 (the pipeline's
             L-BFGS iteration: content + style + temporal + range terms, timed over a whole later frame
             of the default preset), each against a bare VGG forward+backward of the same stack in the
             same run;
    quality  the same 720p frame stylised in fp32, bf16 and fp16: style and content distances measured
             with the fp32 encoder (target: bf16 within 2% of fp32);
    memory   peak CUDA memory of a frame at 720p, 1080p and 2160p once the L-BFGS history is full, per
             precision, against the model of :mod:`videostyle.model.memory`;
    e2e      ``stylize_video`` on the first 60 frames of each clip at --size 1280 with the default preset:
             frames/s, GPU utilisation, busy time of decode, flow, optimise, write and encode;
    levers   one at a time at 720p, fp32 and bf16: torch.optim.LBFGS instead of videostyle.model.lbfgs,
             channels_last, cudnn.benchmark off (the pipeline turns it on), torch.compile of the
             encoder, CUDA graphs (the objective's fwd+bwd captured once);
             each against the bare fwd+bwd and the plain iteration measured beside it.

Weights: ``--weights`` / ``--model`` as the CLI's; default: the trained VGG-16 (HED fine-tune of ImageNet
VGG-16), ``--model vgg16 --weights hed``, when scripts/trained_weights.py has cached it (on a device
machine, point ``VIDEOSTYLE_WEIGHTS_DIR`` at a carried copy), else untrained VGG-19. Timings do not depend
on the weights' values; the quality section does, and the report names the weights with every figure.

``--smoke`` runs every section on the CPU at 64 px with a few iterations (under 3 minutes on 2 cores), so
CI proves the script before a GPU is at hand; CUDA graphs are reported as not applicable there, and
torch.compile uses the ``aot_eager`` backend (no C++ build).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from videostyle.model import features, memory, optimise  # noqa: E402
from videostyle import images
from videostyle.model.lbfgs import LBFGS  # noqa: E402
from videostyle.config import QUALITY_PRESETS, RunOptions, StyleConfig  # noqa: E402
from videostyle.model.optimise import LBFGS_HISTORY, FrameObjective, TemporalTerm, stylize_frame  # noqa: E402
from videostyle.step import Stylizer, pick_device  # noqa: E402
from videostyle.run.api import stylize_video  # noqa: E402
from videostyle.timing import PHASE_NAMES, PHASES  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
PRECISIONS = ("fp32", "bf16", "fp16")


class Report:
    """Rows by section, written to ``gpu_check.md`` and ``gpu_check.json`` after each section."""

    def __init__(self, out: Path, title: str):
        self.out, self.title = out, title
        self.sections: dict[str, list[dict]] = {}
        self.notes: dict[str, list[str]] = {}
        out.mkdir(parents=True, exist_ok=True)

    def row(self, section: str, **values) -> None:
        self.sections.setdefault(section, []).append(values)
        print(f"[{section}] " + ", ".join(f"{k}={_fmt(v)}" for k, v in values.items()), flush=True)
        self.write()  # a run killed at its time limit keeps every row made before

    def note(self, section: str, text: str) -> None:
        self.notes.setdefault(section, []).append(text)
        print(f"[{section}] {text}", flush=True)

    def write(self) -> None:
        (self.out / "gpu_check.json").write_text(json.dumps(
            {"title": self.title, "sections": self.sections, "notes": self.notes}, indent=1, default=str))
        lines = [f"# {self.title}", ""]
        for section in dict.fromkeys([*self.sections, *self.notes]):
            lines += [f"## {section}", ""]
            rows = self.sections.get(section, [])
            if rows:
                keys = list(dict.fromkeys(k for r in rows for k in r))
                lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
                lines += ["| " + " | ".join(_fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
                lines.append("")
            lines += [f"- {n}" for n in self.notes.get(section, [])]
            lines.append("")
        (self.out / "gpu_check.md").write_text("\n".join(lines))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Budget:
    """The run's time budget: a section item is skipped (and reported so) once it is spent."""

    def __init__(self, seconds: float):
        self.start, self.seconds = time.monotonic(), seconds

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------- setup

def default_weights() -> tuple[str, str]:
    """``(model, weights)``: the trained VGG-16 (``--weights hed``) when its cache exists, else untrained
    VGG-19."""
    if features.trained_weights_path().is_file():
        return "vgg16", "hed"
    return "vgg19", "untrained"


def first_frame(clip: Path | None) -> np.ndarray:
    """The clip's first frame ``(H, W, 3)`` uint8, or a smooth synthetic picture without a clip."""
    if clip is not None and clip.is_file():
        import av
        with av.open(str(clip)) as c:
            for frame in c.decode(video=0):
                return frame.to_ndarray(format="rgb24")
    y, x = np.mgrid[0:540, 0:960].astype(np.float32)
    rgb = np.stack([128 + 100 * np.sin(x / 60), 128 + 100 * np.cos(y / 45), 128 + 60 * np.sin((x + y) / 90)], -1)
    return rgb.clip(0, 255).astype(np.uint8)


def make_config(args, *, size: int, **overrides) -> StyleConfig:
    kwargs = dict(styles=(args.style,), size=size, weights=args.weights, model=args.model)
    kwargs.update(overrides)
    return StyleConfig(**kwargs)


class Setup:
    """A :class:`~videostyle.run.chain.Stylizer` at one size and precision, and one frame's objective
    (content + style + temporal toward the content itself + range), as the video loop builds them."""

    def __init__(self, args, rgb: np.ndarray, size: tuple[int, int], precision: str, device: torch.device):
        self.cfg = make_config(args, size=max(size))
        self.stylizer = Stylizer(self.cfg, device=device, working_size=size, precision=precision)
        self.content = images.to_tensor(images.resize_rgb(rgb, size), device)
        temporal = [TemporalTerm(self.content, torch.ones_like(self.content[:, :1]), self.cfg.temporal_weight)]
        self.objective = FrameObjective(self.stylizer.encoder, self.content, self.stylizer.targets,
                                        self.stylizer.loss_weights, temporal)
        self.deepest = _deepest(self.stylizer.encoder)

    def bare_step(self) -> None:
        """One VGG forward+backward of the same stack to its deepest layer, no losses."""
        x = self.content.clone().requires_grad_(True)
        self.stylizer.encoder(x)[self.deepest].float().sum().backward()

    def pipeline_steps(self, n: int, objective=None) -> None:
        """``n`` iterations as the video loop runs a frame (L-BFGS, no final evaluation)."""
        stylize_frame(objective or self.objective, self.content, iterations=n, evaluate_result=False)


def _deepest(encoder) -> str:
    names = [name for name, _ in encoder.stack.named_children()]
    return max(encoder.layers, key=names.index)


def timed(fn, device: torch.device, *, n_inner: int, reps: int) -> float:
    """Median seconds per inner iteration of ``fn()`` (which runs ``n_inner`` iterations)."""
    fn()  # warm-up: cuDNN's algorithm search, allocator growth, compilation
    sync(device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t) / n_inner)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------- sections

def section_env(report: Report, device: torch.device, args) -> None:
    import av
    import cv2
    import torchvision
    row = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else
               f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
               torch=torch.__version__, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
               torchvision=torchvision.__version__, av=av.__version__, opencv=cv2.__version__,
               python=platform.python_version(), weights=args.weights_label)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        row.update(memory_gib=round(props.total_memory / 2**30, 1), sms=props.multi_processor_count,
                   capability=f"{props.major}.{props.minor}")
        try:
            row["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            row["driver"] = f"unknown ({exc})"
    report.row("env", **row)


def section_tests(report: Report, budget: Budget) -> None:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
           "--continue-on-collection-errors", str(ROOT / "tests")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(30, min(150, budget.left() - 60)),
                              env=env, cwd=ROOT)
        (report.out / "tests.txt").write_text(proc.stdout + proc.stderr)  # the failures in full
        tail = [line for line in proc.stdout.splitlines() if line.strip()][-15:]
        summary = tail[-1] if tail else proc.stderr.strip()[-300:]
        report.row("tests", command="pytest -m cuda", exit=proc.returncode, summary=summary,
                   seconds=time.perf_counter() - t)
        failures = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
        for line in failures[:20]:
            report.note("tests", line)
    except subprocess.TimeoutExpired:
        report.row("tests", command="pytest -m cuda", exit="timeout", summary="", seconds=time.perf_counter() - t)


def section_speed(report: Report, budget: Budget, args, rgb: np.ndarray, device: torch.device) -> None:
    n, m, reps = args.iters, args.frame_iters, args.reps
    for size in args.sizes:
        for precision in PRECISIONS:
            if budget.left() < 60:
                report.note("speed", f"{size[0]}x{size[1]} {precision}: skipped, time budget spent")
                continue
            try:
                s = Setup(args, rgb, size, precision, device)
                bare = timed(lambda: [s.bare_step() for _ in range(n)], device, n_inner=n, reps=reps)
                pipe = timed(lambda: s.pipeline_steps(m), device, n_inner=m, reps=reps)
            except torch.OutOfMemoryError:
                report.row("speed", size=f"{size[0]}x{size[1]}", precision=precision, bare_ms="OOM",
                           iteration_ms="OOM", ratio="")
                continue
            report.row("speed", size=f"{size[0]}x{size[1]}", precision=precision,
                       bare_ms=bare * 1e3, iteration_ms=pipe * 1e3, ratio=pipe / bare)
            del s
            if device.type == "cuda":
                torch.cuda.empty_cache()


def section_levers(report: Report, budget: Budget, args, rgb: np.ndarray, device: torch.device) -> None:
    size = args.sizes[0]
    for precision in args.lever_precisions:
        for lever in ("torch_lbfgs", "channels_last", "no_cudnn_benchmark", "compile", "cuda_graph"):
            if budget.left() < (100 if lever == "compile" else 30):
                report.note("levers", f"lever {lever} {precision}: skipped, time budget spent")
                continue
            try:
                lever_row(report, args, rgb, size, precision, lever, device)
            except Exception as exc:  # a lever that fails is a finding, not the end of the check
                report.row("levers", size=f"{size[0]}x{size[1]}", precision=precision, lever=lever,
                           note=f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")


def lever_row(report: Report, args, rgb, size, precision: str, lever: str, device: torch.device) -> None:
    """The pipeline iteration with one lever applied, against the bare fwd+bwd and the plain
    iteration measured again beside it (same process state)."""
    n, m, reps = args.iters, args.frame_iters, args.reps
    s = Setup(args, rgb, size, precision, device)
    plain = timed(lambda: s.pipeline_steps(m), device, n_inner=m, reps=reps)
    bare = timed(lambda: [s.bare_step() for _ in range(n)], device, n_inner=n, reps=reps)
    note = ""
    if lever == "torch_lbfgs":  # the optimiser before videostyle.model.lbfgs: ~100 host syncs per step
        optimise.LBFGS = _TorchLBFGS
        run = lambda: s.pipeline_steps(m)  # noqa: E731
    elif lever == "channels_last":
        s.stylizer.encoder.to(memory_format=torch.channels_last)
        run = lambda: s.pipeline_steps(m)  # noqa: E731
    elif lever == "no_cudnn_benchmark":
        if device.type != "cuda":
            report.row("levers", size=f"{size[0]}x{size[1]}", precision=precision, lever=lever,
                       note="not applicable on the CPU")
            return
        torch.backends.cudnn.benchmark = False
        run = lambda: s.pipeline_steps(m)  # noqa: E731
    elif lever == "compile":
        backend = "inductor" if device.type == "cuda" else "aot_eager"
        compiled = torch.compile(s.stylizer.encoder, backend=backend, dynamic=False)
        objective = FrameObjective(compiled, s.content, s.stylizer.targets, s.stylizer.loss_weights,
                                   s.objective.temporal)
        t = time.perf_counter()
        s.pipeline_steps(2, objective)
        sync(device)
        note = f"backend {backend}, first 2 iterations (compilation) {time.perf_counter() - t:.1f} s"
        run = lambda: s.pipeline_steps(m, objective)  # noqa: E731
    elif lever == "cuda_graph":
        if device.type != "cuda":
            report.row("levers", size=f"{size[0]}x{size[1]}", precision=precision, lever=lever,
                       note="not applicable on the CPU")
            return
        step = _GraphedObjective(s.objective, s.content)
        run = lambda: stylize_frame(step, s.content, iterations=m, evaluate_result=False)  # noqa: E731
    else:
        raise ValueError(lever)
    try:
        with_lever = timed(run, device, n_inner=m, reps=reps)
    finally:
        torch.backends.cudnn.benchmark = True
        optimise.LBFGS = LBFGS
    report.row("levers", size=f"{size[0]}x{size[1]}", precision=precision, lever=lever, bare_ms=bare * 1e3,
               iteration_ms=with_lever * 1e3, ratio=with_lever / bare, vs_plain=with_lever / plain, note=note)


class _TorchLBFGS:
    """``torch.optim.LBFGS`` behind :class:`videostyle.model.lbfgs.LBFGS`'s interface (the lever's baseline)."""

    def __init__(self, variable: torch.Tensor, *, history_size: int, lr: float = 1.0):
        self.opt = torch.optim.LBFGS([variable], lr=lr, max_iter=1, history_size=history_size,
                                     tolerance_grad=0.0, tolerance_change=0.0)

    def step(self, closure):
        return self.opt.step(closure)


class _GraphedObjective:
    """The objective's forward+backward captured once as a CUDA graph and replayed per call.

    Used like a :class:`~videostyle.model.optimise.FrameObjective` by :func:`stylize_frame` (its
    ``loss_and_gradient``). fp32 only (autocast's weight cache cannot be captured).
    """

    def __init__(self, objective: FrameObjective, example: torch.Tensor):
        self.static_x = example.detach().clone().requires_grad_(True)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                self.static_x.grad = None
                total, _ = objective(self.static_x)
                total.backward()
        torch.cuda.current_stream().wait_stream(stream)
        self.static_x.grad = None
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_total, parts = objective(self.static_x)
            self.static_total.backward()
        self.static_parts = parts

    def loss_and_gradient(self, x: torch.Tensor):
        """As :meth:`FrameObjective.loss_and_gradient`: replays the graph at ``x``."""
        with torch.no_grad():
            self.static_x.copy_(x)
        self.graph.replay()
        x.grad = self.static_x.grad.clone()
        return self.static_total.detach().clone(), {name: v.detach().clone() for name, v in self.static_parts.items()}


def distances(encoder, image: torch.Tensor, content: torch.Tensor, style_grams: dict, layers: list[str],
              content_layer: str) -> tuple[float, float]:
    """``(style, content)`` distances of ``image``: the mean over style layers of the Gram MSE relative
    to the Gram's power, and the relu4_2 MSE relative to the content's power (both float32)."""
    from videostyle.model import losses
    with torch.no_grad():
        feats = encoder(image)
        target = encoder(content)[content_layer]
        style = statistics.fmean(float(losses.style_loss(feats[layer], style_grams[layer])) for layer in layers)
        return style, float(losses.content_loss(feats[content_layer], target))


def section_quality(report: Report, budget: Budget, args, rgb: np.ndarray, device: torch.device) -> None:
    size = args.sizes[0]
    ref = Setup(args, rgb, size, "fp32", device)
    layers = list(ref.stylizer.loss_weights.style_layers)
    content_layer = next(iter(ref.stylizer.loss_weights.content_layers))
    results = {}
    for precision in PRECISIONS:
        if budget.left() < 90:
            report.note("quality", f"{precision}: skipped, time budget spent")
            continue
        s = ref if precision == "fp32" else Setup(args, rgb, size, precision, device)
        objective = FrameObjective(s.stylizer.encoder, s.content, s.stylizer.targets, s.stylizer.loss_weights)
        t = time.perf_counter()
        out = stylize_frame(objective, s.content, iterations=args.quality_iters, evaluate_result=False).image
        sync(device)
        seconds = time.perf_counter() - t
        style, content = distances(ref.stylizer.encoder, out, ref.content, ref.stylizer.targets.grams, layers,
                                   content_layer)
        results[precision] = (out, style, content)
        row = dict(size=f"{size[0]}x{size[1]}", precision=precision, iterations=args.quality_iters,
                   style_distance=style, content_distance=content, seconds=seconds)
        if precision != "fp32" and "fp32" in results:
            _, s32, c32 = results["fp32"]
            row.update(style_vs_fp32=style / s32 - 1, content_vs_fp32=content / c32 - 1,
                       max_abs_pixel_diff=float((out - results["fp32"][0]).abs().max()))
        report.row("quality", **row)
        images.save_image(images.to_uint8(out), report.out / f"quality_{precision}.png")


def section_memory(report: Report, budget: Budget, args, rgb: np.ndarray, device: torch.device) -> None:
    for size in args.memory_sizes:
        for precision in ("fp32", "bf16"):
            if budget.left() < 60:
                report.note("memory", f"{size[0]}x{size[1]} {precision}: skipped, time budget spent")
                continue
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            try:
                s = Setup(args, rgb, size, precision, device)
                t = time.perf_counter()
                s.pipeline_steps(args.memory_iters)  # 52: the history is full from iteration 51 on
                sync(device)
                seconds = (time.perf_counter() - t) / args.memory_iters
            except torch.OutOfMemoryError:
                report.row("memory", size=f"{size[0]}x{size[1]}", precision=precision, peak_mib="OOM")
                continue
            enc = s.stylizer.encoder
            stack = [name for name, _ in enc.stack.named_children()]
            weights_bytes = sum(p.numel() * p.element_size() for p in enc.parameters())
            model = memory.estimate_peak_bytes(size[1], size[0], stack, precision=precision,
                                               read_layers=enc.layers, history_size=LBFGS_HISTORY,
                                               weights_bytes=weights_bytes)
            peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
            report.row("memory", size=f"{size[0]}x{size[1]}", precision=precision,
                       peak_mib=peak / 2**20, model_mib=model["total"] / 2**20,
                       model_lbfgs_mib=model["lbfgs"] / 2**20, model_vgg_mib=model["vgg_activations"] / 2**20,
                       measured_over_model=peak / model["total"], iterations=args.memory_iters,
                       iteration_ms=seconds * 1e3,
                       fits_16gb=peak < 16 * 2**30, kind="max allocated" if device.type == "cuda" else
                       "process max RSS (whole run so far)")
            del s


def section_tiled(report: Report, budget: Budget, args, rgb: np.ndarray, device: torch.device) -> None:
    """Issue 17 on the device: at --tiled-sizes, the memory plan for --tiled-memory GiB (tiles, L-BFGS
    pairs), run as the CLI runs it, under a hard cap of --tiled-memory GiB (``Stylizer.plan_memory``
    caps the allocator): OOM or its peak (max allocated and max reserved) over a full history, and
    seconds per iteration against the same frame in bands under the same cap (where the plan is tiles:
    bands are the CPU's plan, unmeasured on a GPU) and untiled, uncapped, with the same pairs."""
    from videostyle.model.banded import BandedObjective
    from videostyle.model.memory import BANDS
    from videostyle.model.tiled import TiledObjective
    from videostyle.model.tiling import TILE_HALO, tile_grid
    for size in args.tiled_sizes:
        if budget.left() < 60:
            report.note("tiled", f"{size[0]}x{size[1]}: skipped, time budget spent")
            continue
        s = Setup(args, rgb, size, args.tiled_precision, device)
        st = s.stylizer
        st.plan_memory(size, tile=args.tiled_tile, max_memory=int(args.tiled_memory * 2**30))
        iters = min(args.memory_iters, st.history + 2)  # the history full from its last pair on
        row = dict(size=f"{size[0]}x{size[1]}", precision=args.tiled_precision, budget_gib=args.tiled_memory,
                   tile=st.tile, lbfgs_pairs=st.history, iterations=iters,
                   grid=("x".join(map(str, tile_grid(size[1], size[0], st.tile))) if isinstance(st.tile, int)
                         else st.tile or "1x1"))
        for mode in ("tiled", "bands", "untiled"):
            if mode == "bands" and st.tile == BANDS:
                continue  # the plan's own mode: the tiled row has it
            if mode == "untiled" and budget.left() < 60:
                break
            if device.type == "cuda":
                if mode == "untiled":  # the cap plan_memory set is the tiled run's promise, not this one's
                    torch.cuda.set_per_process_memory_fraction(1.0, device.index or 0)
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            if mode == "bands" or (mode == "tiled" and st.tile == BANDS):
                objective = BandedObjective(st.encoder, s.content, st.targets, st.loss_weights, s.objective.temporal)
            elif mode == "tiled" and st.tile:
                objective = TiledObjective(st.encoder, s.content, st.targets, st.loss_weights, s.objective.temporal,
                                           tile=st.tile, halo=TILE_HALO)
            else:
                objective = s.objective
            try:
                t = time.perf_counter()
                stylize_frame(objective, s.content, iterations=iters, evaluate_result=False,
                              history_size=st.history)
                sync(device)
                row[f"{mode}_ms"] = (time.perf_counter() - t) / iters * 1e3
                if device.type == "cuda":
                    row[f"{mode}_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
                    row[f"{mode}_reserved_mib"] = torch.cuda.max_memory_reserved(device) / 2**20
            except torch.OutOfMemoryError:
                row[f"{mode}_ms"] = "OOM"
            del objective
        for mode in ("tiled", "bands"):
            if isinstance(row.get("untiled_ms"), float) and isinstance(row.get(f"{mode}_ms"), float):
                row[f"{mode}_over_untiled"] = row[f"{mode}_ms"] / row["untiled_ms"]
        report.row("tiled", **row)
        del s, st
    if device.type == "cuda":  # the later sections run uncapped
        torch.cuda.set_per_process_memory_fraction(1.0, device.index or 0)


def trim_clip(src: Path, dst: Path, n_frames: int) -> None:
    """The first ``n_frames`` frames of ``src`` re-encoded (H.264, the source's time base), with the
    audio of that span transcoded to AAC when there is audio."""
    import av
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        vin = inp.streams.video[0]
        vout = out.add_stream("libx264", rate=vin.average_rate or 30)
        width = vin.codec_context.width // 2 * 2
        height = vin.codec_context.height // 2 * 2
        vout.width, vout.height, vout.pix_fmt = width, height, "yuv420p"
        vout.time_base = vout.codec_context.time_base = vin.time_base
        for i, frame in enumerate(inp.decode(vin)):
            if i == n_frames:
                break
            frame = frame.reformat(width=width, height=height, format="yuv420p")
            out.mux(vout.encode(frame))
        out.mux(vout.encode())


class UtilisationSampler:
    """GPU utilisation (%) sampled every 0.2 s in a thread, through NVML (``nvidia-ml-py``)."""

    def __init__(self, device: torch.device):
        self.samples: list[int] = []
        self.error = None
        self._stop = threading.Event()
        self._device = device
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.wait(0.2):
                self.samples.append(int(torch.cuda.utilization(self._device)))
        except Exception as exc:  # no NVML: reported, not fatal
            self.error = f"{type(exc).__name__}: {exc}"

    def __enter__(self):
        if self._device.type == "cuda":
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def section_e2e(report: Report, budget: Budget, args, device: torch.device) -> None:
    preset = QUALITY_PRESETS["default"]
    runs = [(clip, precision) for clip in args.clips for precision in args.e2e_precisions]
    per_iteration = {row["precision"]: row["iteration_ms"] / 1e3 for row in report.sections.get("speed", [])
                     if row.get("size") == f"{args.sizes[0][0]}x{args.sizes[0][1]}"
                     and isinstance(row.get("iteration_ms"), float)}
    for clip, precision in runs:
        iters_first = args.e2e_iters[0] or preset["iters_first"]
        iters = args.e2e_iters[1] or preset["iters"]
        # Expected run time: the iterations (the first frame's coarse octave costs 1/4) at the speed
        # section's rate, plus a third for setup and the per-frame work around them.
        expected = 1.33 * per_iteration.get(precision, 0.0) * (1.25 * iters_first + (args.frames - 1) * iters)
        if budget.left() < max(args.e2e_min_left, expected):
            report.note("e2e", f"{clip.name} {precision}: skipped, {budget.left():.0f} s left, about "
                        f"{expected:.0f} s needed")
            continue
        if not clip.is_file():
            report.note("e2e", f"{clip}: missing, skipped")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            short = Path(tmp) / f"first{args.frames}_{clip.stem}.mp4"
            trim_clip(clip, short, args.frames)
            cfg = make_config(args, size=args.e2e_size, iters_first=iters_first, iters=iters,
                              octaves=preset["octaves"])
            opts = RunOptions(device=str(device), quiet=True, precision=precision)
            t = time.perf_counter()
            with UtilisationSampler(device) as util:
                summary = stylize_video(short, Path(tmp) / "out.mp4", cfg, opts)
            wall = time.perf_counter() - t
            phases = PHASES.snapshot()
        row = dict(clip=clip.name, frames=summary.frames, size=args.e2e_size, precision=precision,
                   iters=f"{cfg.iters_first},{cfg.iters}", octaves=cfg.octaves, frames_per_s=summary.frames / wall,
                   wall_s=wall, gpu_util_mean=(statistics.fmean(util.samples) if util.samples else
                                               (util.error or "n/a")))
        for name in PHASE_NAMES:
            row[f"{name}_share"] = phases.get(name, (0.0, 0))[0] / wall
        report.row("e2e", **row)


# --------------------------------------------------------------------------------------------- main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for gpu_check.md, gpu_check.json and images")
    ap.add_argument("--smoke", action="store_true", help="everything on the CPU at 64 px, a few iterations")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for the whole check (default 450)")
    ap.add_argument("--model", default=None, help="vgg16 or vgg19 (default: see the module docstring)")
    ap.add_argument("--weights", default=None, help="as the CLI's --weights (default: see the module docstring)")
    ap.add_argument("--style", default=None, help="style image (default: Starry Night from ../shared, else "
                    "samples/swirls.png)")
    ap.add_argument("--clips", default=None, help="comma-separated videos for e2e (default: flower.mp4 and "
                    "karma.mp4 from ../shared/data/videos)")
    ap.add_argument("--sections", default="env,tests,speed,quality,memory,tiled,levers,e2e")
    ap.add_argument("--tiled-memory", type=float, default=16.0,
                    help="GiB: the memory plan of the tiled section (default 16: 4K in a 16 GB GPU)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    if args.model is None and args.weights is None:
        args.model, args.weights = default_weights()
    args.model = args.model or "vgg19"
    args.weights = args.weights or "auto"
    args.weights_label = features.resolve_weights(args.weights, args.model).label
    if args.style is None:
        starry = SHARED / "styles" / "starry_night.jpg"
        args.style = str(starry if starry.is_file() else ROOT / "samples" / "swirls.png")
    clips = (args.clips.split(",") if args.clips else
             [str(SHARED / "videos" / "flower.mp4"), str(SHARED / "videos" / "karma.mp4")])
    args.clips = [Path(c) for c in clips]
    if args.smoke:
        args.device = "cpu"
        args.sizes, args.memory_sizes = [(64, 36)], [(64, 36)]
        args.iters, args.reps, args.quality_iters, args.memory_iters = 2, 1, 4, 4
        args.frame_iters = 3
        args.frames, args.e2e_size, args.e2e_iters, args.e2e_min_left = 4, 64, (4, 2), 10
        args.e2e_precisions, args.lever_precisions = ("fp32",), ("fp32",)
        args.tiled_sizes, args.tiled_precision, args.tiled_tile = [(256, 144)], "fp32", 96
        args.clips = args.clips[:1] if args.clips[0].is_file() else [Path("(generated)")]
    else:
        args.sizes = [(1280, 720), (1920, 1080)]
        args.memory_sizes = [(1280, 720), (1920, 1080), (3840, 2160)]
        args.iters, args.reps, args.quality_iters, args.memory_iters = 10, 3, 150, LBFGS_HISTORY + 2
        # A pipeline iteration is timed over a whole later frame of the default preset: L-BFGS's cost
        # grows with its history (measured on the H200 at 720p: 15.6 ms over 10 iterations, 17.9 over 52).
        args.frame_iters = QUALITY_PRESETS["default"]["iters"]
        args.frames, args.e2e_size, args.e2e_iters, args.e2e_min_left = 60, 1280, (0, 0), 60
        args.e2e_precisions, args.lever_precisions = ("fp32", "bf16"), ("fp32", "bf16")
        args.tiled_sizes, args.tiled_precision, args.tiled_tile = [(3840, 2160)], "fp32", None
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    sections = args.sections.split(",")
    budget = Budget(args.budget)
    report = Report(Path(args.out), f"videostyle GPU check{' (smoke, CPU)' if args.smoke else ''}: "
                    f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, weights "
                    f"{args.weights_label}")
    if args.smoke and args.clips == [Path("(generated)")]:
        args.clips = [_generated_clip(Path(args.out))]
    rgb = first_frame(args.clips[0] if args.clips else None)
    for name in sections:
        t = time.perf_counter()
        try:
            if name == "env":
                section_env(report, device, args)
            elif name == "tests":
                section_tests(report, budget)
            elif name == "speed":
                section_speed(report, budget, args, rgb, device)
            elif name == "quality":
                section_quality(report, budget, args, rgb, device)
            elif name == "memory":
                section_memory(report, budget, args, rgb, device)
            elif name == "tiled":
                section_tiled(report, budget, args, rgb, device)
            elif name == "e2e":
                section_e2e(report, budget, args, device)
            elif name == "levers":
                section_levers(report, budget, args, rgb, device)
            else:
                raise SystemExit(f"unknown section {name!r}")
        except Exception as exc:  # one broken section must not cost the others' figures
            report.note(name, f"section failed: {type(exc).__name__}: {exc}")
            import traceback
            traceback.print_exc()
        report.note(name, f"section took {time.perf_counter() - t:.1f} s")
        report.write()
    print(f"report: {Path(args.out) / 'gpu_check.md'} ({time.monotonic() - budget.start:.0f} s)")
    return 0


def _generated_clip(folder: Path) -> Path:
    """A 12-frame 96x64 test pattern clip (smoke runs without ../shared)."""
    import av
    path = folder / "smoke_clip.mp4"
    with av.open("testsrc2=size=96x64:rate=12:duration=1", format="lavfi") as src, av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for frame in src.decode(video=0):
            out.mux(stream.encode(frame.reformat(format="yuv420p")))
        out.mux(stream.encode())
    return path


if __name__ == "__main__":
    sys.exit(main())
