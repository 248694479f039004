"""THE per-frame step, and the :class:`Stylizer` that holds what is fixed for a whole run.

One frame, whoever asks for it (the chain of a video run, a later pass, a Ray segment, the webcam
preview, a still image)::

    content (uint8 RGB, working size) -> optimised space -> init (+ temporal terms) -> stylise
        -> finish (chroma, mask) -> uint8 (what is saved) -> read back (the next frame's "previous")

:meth:`Stylizer.step` is that sequence; the callers differ only in how they choose the start (the
``start`` callback: warm start from the warped previous frame, a blend with the pass before, ...) and
in what they do with the saved frame. See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch

from videostyle import images
from videostyle.config import StyleConfig
from videostyle.errors import InputError
from videostyle.model import colour, memory
from videostyle.model.features import LAYER_NAMES, VGGEncoder, resolve_weights
from videostyle.model.masks import FrameMasks, composite
from videostyle.model.optimise import (FrameObjective, FrameResult, FrameStart, LossWeights, StyleTargets, TemporalTerm,
                                       compute_style_targets, octave_sizes, stylize_coarse_to_fine,
                                       stylize_frame)
from videostyle.model.banded import BandedObjective, uses_bands
from videostyle.model.tiled import TiledObjective
from videostyle.model.tiling import TILE_HALO, tile_grid
from videostyle.motion.temporal import initial_image
from videostyle.timing import PHASES

log = logging.getLogger(__name__)

# ``start(target) -> (init, temporal terms[, fresh])``: how a frame begins, given its content in the
# optimised space (a FrameStart, or its first two fields).
Start = Callable[[torch.Tensor], "FrameStart | tuple[torch.Tensor, tuple[TemporalTerm, ...]]"]


def pick_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``/``cuda``/``cuda:N`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise InputError(f"--device must be auto, cpu, cuda or cuda:N; got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name} requested but CUDA is not available; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices (cuda:0 .. "
                         f"cuda:{torch.cuda.device_count() - 1})")
    return device


def frame_generator(seed: int, index: int) -> torch.Generator:
    """The random generator for frame ``index`` (noise init): seeded per frame, so a resumed run draws
    the same noise as an uninterrupted one. Frame 0 uses ``seed`` itself, as :func:`stylize_still`."""
    if index == 0:
        return torch.Generator().manual_seed(seed)
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, index]).generate_state(1)[0]))


# A CPU process's peak over the memory model's, for a tiled 1080p image (docs/BENCHMARKS.md, "Tiled
# optimisation"): 2.80 GB measured where the model planned 2.5 GB (1.87 GB of it the frame's). The
# allocator's pieces and oneDNN's scratch space are not in the model.
CPU_PEAK_OVER_MODEL = 1.15

# A GPU run's peak over the model's (docs/BENCHMARKS.md, "GPU: the second run"): on an H200 capped at
# 16 GiB, a 4K frame planned for 16 GiB ran out of memory (13.8-14.1 GiB allocated at the failure, the rest
# the caching allocator's pieces and cuDNN's workspace), and one planned for 14 GiB ran (12.8 GiB
# allocated, 14.6 GiB reserved).
CUDA_PEAK_OVER_MODEL = 1.15


def frame_memory_budget(device: torch.device, max_memory: int | None = None, *, reserve: int = 0) -> int | None:
    """Bytes of the run's peak one frame's optimisation may take, None where unknown (the plan fits the
    memory model's estimates in it, the untiled and tiled ones with :func:`peak_over_model`'s room).

    ``max_memory``: the run's peak, bytes: on the CPU the process's resident memory, on a GPU what
    torch reserves there. What the process holds already (torch, the weights, the style targets) and
    ``reserve`` (the video pipeline's buffers) are taken off. None: 90% of a GPU's memory less 0.5 GiB
    (CUDA's context is outside torch's allocator), or 60% of the memory available on the CPU (measured
    there: an untiled frame's peak RSS is 1.6x the model's).
    """
    if device.type == "cuda":
        if max_memory is None:
            max_memory = int(torch.cuda.get_device_properties(device).total_memory * 0.9) - (512 << 20)
        return max_memory - held_memory(device) - reserve
    if max_memory is None:
        available = memory.available_memory()
        return None if available is None else int(available * 0.6) - reserve
    return max_memory - held_memory(device) - reserve


def peak_over_model(device: torch.device) -> float:
    """The measured peak over the memory model's untiled and tiled estimates on ``device``'s kind:
    :data:`CUDA_PEAK_OVER_MODEL` or :data:`CPU_PEAK_OVER_MODEL`."""
    return CUDA_PEAK_OVER_MODEL if device.type == "cuda" else CPU_PEAK_OVER_MODEL


def bound_memory(device: torch.device, max_memory: int | None) -> None:
    """Makes ``--max-memory`` hold as the run's peak, not only as its plan. On a GPU torch's allocator
    may then reserve at most ``max_memory`` bytes there (beyond, ``torch.OutOfMemoryError``): uncapped,
    the convolutions take whatever workspace is free (a tiled 4K frame planned for 16 GiB peaked at
    134 GiB allocated on an H200); capped, cuDNN picks algorithms whose workspace fits, and the frame
    planned as :func:`frame_memory_budget` plans it ran within the cap. On the CPU glibc gives large
    freed blocks back at once (:func:`~videostyle.model.memory.return_freed_memory_at_once`), so the
    resident memory follows the tensors held. Nothing without ``max_memory``."""
    if max_memory is None:
        return
    if device.type == "cpu":
        memory.return_freed_memory_at_once()
        return
    if device.type != "cuda":
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, max_memory / total), index)


def held_memory(device: torch.device) -> int:
    """Bytes the process holds now: its resident memory on the CPU (0 where unknown), what torch has
    allocated on a GPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return memory.resident_memory() or 0


@dataclass(frozen=True)
class FrameStep:
    """One finished frame: ``rgb`` ``(H, W, 3)`` uint8 as saved; ``previous`` the same read back into the
    optimised space ``(1, 3, H, W)`` (what the next frame warm-starts from, as a resume would read it);
    ``result`` the optimiser's (losses, iterations)."""

    rgb: np.ndarray
    previous: torch.Tensor
    result: FrameResult


class Stylizer:
    """Holds what is fixed for a whole run: device, VGG encoder, style targets and loss weights.

    With ``preserve_colors`` the optimiser works on luminance: :meth:`to_optimised` maps frames into that
    space and :meth:`finish` maps a result back (content chroma, then the ``--mask`` composite).
    ``colour_reference`` ``(1, 3, H, W)`` RGB at the working size: the frame whose luminance statistics
    the style luminance is matched to (the first frame of a video, so the targets are the same for
    every frame); None: not matched.

    ``precision``: ``fp32``, or ``bf16``/``fp16`` to run VGG's convolutions under autocast (the image,
    the Gram matrices and the losses stay float32); see :class:`~videostyle.model.features.VGGEncoder`.

    ``tile``: evaluate VGG on tiles of at most this many px a side (:mod:`videostyle.model.tiled`) when the
    frame is larger; :data:`~videostyle.model.memory.BANDS`: block by block in bands of rows
    (:mod:`videostyle.model.banded`); None: the whole frame at once. :meth:`plan_memory` sets it, and
    ``history`` (the L-BFGS correction pairs), for a memory budget.
    """

    on_step: Callable[[], None] | None = None  # called after each optimiser iteration (a progress bar)

    def __init__(self, cfg: StyleConfig, *, device: torch.device, working_size: tuple[int, int],
                 colour_reference: torch.Tensor | None = None, precision: str = "fp32",
                 tile: int | str | None = None):
        self.cfg = cfg
        self.device = device
        self.precision = precision
        self.tile = tile
        self.history = cfg.lbfgs_history  # L-BFGS correction pairs (plan_memory may lower it)
        # The mask first: a bad --mask is reported before the weights are loaded.
        self.masks = FrameMasks(cfg.mask, working_size, feather_px=cfg.mask_feather) if cfg.mask else None
        self.weights = resolve_weights(cfg.weights, cfg.model)
        self.loss_weights = LossWeights(cfg.content_weight, cfg.style_weight, cfg.tv_weight,
                                        _normalised(cfg.content_layers), _normalised(cfg.style_layers),
                                        range=cfg.range_weight, new_content=cfg.style_weight * cfg.new_content_style)
        layers = [*self.loss_weights.content_layers, *self.loss_weights.style_layers]
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input size for the whole run: pick the fastest
        self.encoder = VGGEncoder(layers, self.weights, pooling=cfg.pooling,
                                  precision=precision).to(device)
        # The encoder holds its own copy; the file's tensors (the whole of VGG-19's features: 80 MB) go.
        self.weights = replace(self.weights, state_dict=None)
        self.colour_reference = colour_reference
        self.targets = self._style_targets(working_size)

    def _style_targets(self, working_size: tuple[int, int]) -> StyleTargets:
        long_edge = max(16, int(round(max(working_size) * self.cfg.style_scale)))
        style_images = []
        for path in self.cfg.styles:
            rgb = images.load_image(path)
            rgb = images.resize_rgb(rgb, check_image_shape("style image", path, (rgb.shape[1], rgb.shape[0]),
                                                           long_edge, self.cfg))
            style = images.to_tensor(rgb, self.device)
            if self.cfg.preserve_colors:
                style = colour.luminance(style)
                if self.colour_reference is not None:
                    style = colour.match_luminance(style, colour.luminance(self.colour_reference))
            style_images.append(style)
        return compute_style_targets(self.encoder, style_images, self.cfg.blend_weights,
                                     list(self.loss_weights.style_layers))

    # -- THE step ------------------------------------------------------------------------------------
    def step(self, content_rgb: np.ndarray, index: int, start: Start, *, iterations: int,
             warm_started: bool = False, evaluate_result: bool = False, snapshots=None,
             after_optimise: Callable[[], None] | None = None) -> FrameStep:
        """Stylise frame ``index`` from ``content_rgb`` ``(H, W, 3)`` uint8 at the working size.

        ``start(target)`` gives the initial image and the temporal terms from the content in the
        optimised space (:meth:`to_optimised`). ``warm_started``: see :meth:`stylize`. ``snapshots``: a
        :class:`~videostyle.store.snapshots.SnapshotWriter` (``--save-every``) or None.
        ``after_optimise``: called once the optimiser is done, before anything is finished (a test kill
        point).
        """
        content = images.to_tensor(content_rgb, self.device)
        target = self.to_optimised(content)
        init, temporal, fresh = FrameStart(*start(target))
        with PHASES.measure("optimise"):  # to_uint8 waits for the device: its work counts here
            result = self.stylize(target, init, iterations=iterations, temporal=temporal, fresh=fresh,
                                  warm_started=warm_started, evaluate_result=evaluate_result,
                                  on_image=self._snapshot_hook(snapshots, content, index))
            if after_optimise is not None:
                after_optimise()
            rgb = images.to_uint8(self.finish(result.image, content, index))
        return FrameStep(rgb, self.read_back(rgb), result)

    def read_back(self, rgb: np.ndarray) -> torch.Tensor:
        """A saved frame ``(H, W, 3)`` uint8 in the optimised space, as the next frame (or a resume)
        sees it: the warm start always uses the 8-bit frame as saved."""
        return self.to_optimised(images.to_tensor(rgb, self.device))

    def _snapshot_hook(self, writer, content: torch.Tensor, index: int) -> Callable | None:
        """``on_image`` for the optimiser: writes the finished-looking image when ``writer`` wants."""
        if writer is None:
            return None

        def on_image(done: int, image: torch.Tensor) -> None:
            if writer.wants(done):
                writer.write(done, images.to_uint8(self.finish(image.clamp(0, 1), content, index)))
        return on_image

    def stylize(self, content: torch.Tensor, init: torch.Tensor, *, iterations: int,
                temporal: tuple[TemporalTerm, ...] = (), warm_started: bool = False,
                evaluate_result: bool = True, on_image: Callable | None = None,
                fresh: torch.Tensor | None = None) -> FrameResult:
        """Optimise one frame: ``content`` and ``init`` ``(1, 3, H, W)`` in the optimised space
        (:meth:`to_optimised`).

        Coarse-to-fine (the config's ``octaves``, ``iterations`` at every level; ``on_image`` sees the
        full-size level only) for frames optimised from scratch. A ``warm_started`` frame is optimised
        at full size only: it inherits its large-scale structure from the frame before, and measured
        (docs/BENCHMARKS.md), coarse levels there cost more iterations to the same loss than they save.
        """
        kwargs = dict(optimizer=self.cfg.optimizer, learning_rate=self.cfg.learning_rate,
                      tol_loss_relative=self.cfg.tol_loss_relative, history_size=self.history,
                      evaluate_result=evaluate_result,
                      on_image=on_image)
        if self.cfg.octaves > 1 and not warm_started:
            return stylize_coarse_to_fine(self.encoder, content, init, self.targets, self.loss_weights,
                                          temporal, iterations=iterations, octaves=self.cfg.octaves,
                                          make_objective=self.make_objective, **kwargs)
        objective = self.make_objective(self.encoder, content, self.targets, self.loss_weights, temporal, fresh)
        return stylize_frame(objective, init, iterations=iterations, **kwargs)

    def plan_memory(self, working_size: tuple[int, int], *, tile: int | str | None = None,
                    max_memory: int | None = None, reserve: int = 0, max_history: int | None = None) -> None:
        """Sets :attr:`tile` and :attr:`history` for frames of ``working_size`` ``(W, H)``
        (:func:`videostyle.model.memory.plan_memory`): ``tile`` when given (px, or
        :data:`~videostyle.model.memory.BANDS`; with the config's history),
        else what fits ``max_memory`` (:func:`frame_memory_budget`; ``reserve`` bytes for what else the
        run holds): untiled when the whole frame fits, else bands on the CPU
        (:func:`~videostyle.model.banded.uses_bands`) or tiles, and fewer L-BFGS pairs when they would
        not fit otherwise. ``max_history``: at most this many pairs whatever the config says
        (the refinement of a still, :mod:`videostyle.model.upscale`). ``max_memory`` also bounds the
        process for the rest of the run: torch's allocator on a GPU, glibc's on the CPU (:func:`bound_memory`)."""
        wanted = self.cfg.lbfgs_history if max_history is None else min(self.cfg.lbfgs_history, max_history)
        self.history = wanted
        bound_memory(self.device, max_memory)
        if tile is not None:
            if tile == memory.BANDS and self.precision != "fp32":
                raise InputError(f"--tile bands runs VGG in fp32, not --precision {self.precision}: drop one of them, "
                                 f"or give --tile PX")
            self.tile = tile
            return
        self.tile = None
        budget = frame_memory_budget(self.device, max_memory, reserve=reserve)
        if budget is None:
            return
        width, height = working_size
        if budget <= 0:
            raise InputError(f"--max-memory {max_memory / 2**30:.2f} GiB leaves nothing for {width}x{height} px "
                             f"frames: torch, the weights, the style targets and the video's buffers already "
                             f"take {(held_memory(self.device) + reserve) / 2**30:.2f} GiB; raise it")
        stack = [name for name, _ in self.encoder.stack.named_children()]
        try:
            plan = memory.plan_memory(
                height, width, stack, budget_bytes=budget, halo=TILE_HALO, precision=self.precision,
                read_layers=self.encoder.layers, history_size=wanted,
                weights_bytes=sum(p.numel() * p.element_size() for p in self.encoder.parameters()),
                bands=uses_bands(self.precision, self.device.type), overhead=peak_over_model(self.device))
        except ValueError as exc:
            raise InputError(f"{exc}; lower --size, or raise --max-memory") from exc
        self.tile, self.history = plan.tile, plan.history
        if plan.tile == memory.BANDS:
            log.info("%dx%d px frames: VGG runs block by block in bands of rows to fit %.2f GiB",
                     width, height, budget / 2**30)
        elif plan.tile is not None:
            rows, cols = tile_grid(height, width, plan.tile)
            log.info("%dx%d px frames: VGG runs on %dx%d tiles (at most %d px a side) to fit %.2f GiB",
                     width, height, cols, rows, plan.tile, budget / 2**30)
        if plan.history < wanted:
            log.warning("%dx%d px frames: L-BFGS keeps %d correction pairs instead of %d, to fit the memory "
                        "(%.2f GiB for the frame); --max-memory raises it", width, height, plan.history,
                        wanted, budget / 2**30)

    def make_objective(self, encoder, content, targets, weights, temporal=(), fresh=None):
        """The frame objective: VGG on the whole frame, in bands (every octave), or on tiles of
        ``self.tile`` px (octaves larger than a tile): the same gradient to float rounding, in bounded
        memory (:mod:`videostyle.model.banded`, :mod:`videostyle.model.tiled`)."""
        if self.device.type == "cpu":
            memory.release_free_memory()  # each octave's tensors have other sizes than the last's
        if self.tile == memory.BANDS:
            objective = BandedObjective(encoder, content, targets, weights, temporal, fresh)
        elif self.tile is None or max(content.shape[-2:]) <= self.tile:
            objective = FrameObjective(encoder, content, targets, weights, temporal, fresh)
        else:
            objective = TiledObjective(encoder, content, targets, weights, temporal, fresh, tile=self.tile,
                                       halo=TILE_HALO)
        return objective if self.on_step is None else CountedObjective(objective, self.on_step)

    def to_optimised(self, image: torch.Tensor) -> torch.Tensor:
        """An RGB frame ``(1, 3, H, W)`` in [0, 1] in the space the optimiser works in: its luminance
        with ``preserve_colors`` (so warm starts and temporal terms from saved frames stay in Y), else
        itself."""
        return colour.luminance(image) if self.cfg.preserve_colors else image

    def finish(self, image: torch.Tensor, content: torch.Tensor, index: int) -> torch.Tensor:
        """The frame to save from an optimised ``image``: with the chroma of ``content`` (RGB, working
        size) when preserving colours, then kept as ``content`` outside the mask of frame ``index``."""
        if self.cfg.preserve_colors:
            image = colour.with_chroma_of(image, content)
        if self.masks is not None:
            image = composite(image, content, self.masks.tensor(index, image.device))
        return image


class CountedObjective:
    """An objective that calls ``on_step()`` after each gradient evaluation (= one optimiser iteration:
    see :func:`~videostyle.model.optimise.stylize_frame`), for a progress bar over iterations."""

    def __init__(self, objective, on_step: Callable[[], None]):
        self.objective = objective
        self.on_step = on_step

    def loss_and_gradient(self, image: torch.Tensor):
        out = self.objective.loss_and_gradient(image)
        self.on_step()
        return out

    def __getattr__(self, name):
        return getattr(self.objective, name)

    def __call__(self, image: torch.Tensor):
        return self.objective(image)


def stylize_still(rgb: np.ndarray, cfg: StyleConfig, *, device: torch.device, snapshots=None,
                  precision: str = "fp32", tile: int | str | None = None, max_memory: int | None = None,
                  refine_iters: int | None = None,
                  on_step: Callable[[], None] | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """Stylise one picture ``(H, W, 3)`` uint8 alone, with the first-frame settings.

    Returns the result at the working size ``(h, w, 3)`` uint8 (with ``refine_iters`` not None: at
    ``rgb``'s size, :func:`videostyle.model.upscale.upscale_still`, that many iterations per 2x step) and
    the working-size result's final loss terms (floats).
    ``snapshots``: a :class:`~videostyle.store.snapshots.SnapshotWriter` (``--save-every``) or None.
    ``on_step()``: called after every optimiser iteration (a progress bar).
    """
    working = images.working_size(rgb.shape[1], rgb.shape[0], cfg.size)
    content_rgb = images.resize_rgb(rgb, working)
    stylizer = Stylizer(cfg, device=device, working_size=working,
                        colour_reference=images.to_tensor(content_rgb, device), precision=precision)
    stylizer.plan_memory(working, tile=tile, max_memory=max_memory)
    stylizer.on_step = on_step

    def start(target):
        return initial_image(cfg.init_first, content=target, generator=frame_generator(cfg.seed, 0)), ()

    done = stylizer.step(content_rgb, 0, start, iterations=cfg.iters_first, evaluate_result=True,
                         snapshots=snapshots)
    out = done.rgb
    if refine_iters is not None and out.shape[:2] != rgb.shape[:2]:
        from videostyle.model.upscale import upscale_still
        out = upscale_still(stylizer, rgb, out, iterations=refine_iters, tile=tile, max_memory=max_memory)
    return out, done.result.losses


def fresh_frame_iterations(cfg: StyleConfig, working: tuple[int, int]) -> int:
    """Optimiser iterations of a frame optimised from scratch at ``working`` ``(W, H)`` px:
    ``iters_first`` at each octave level :func:`~videostyle.model.optimise.octave_sizes` keeps."""
    levels = len(octave_sizes(working[1], working[0], cfg.octaves)) if cfg.octaves > 1 else 1
    return levels * cfg.iters_first


def still_iterations(rgb: np.ndarray, cfg: StyleConfig, *, refine_iters: int | None = None) -> int:
    """Optimiser iterations :func:`stylize_still` runs on ``rgb`` ``(H, W, 3)``: those of a frame from
    scratch, then (``refine_iters`` not None) those of the upscale to the source size."""
    from videostyle.model.upscale import refine_iterations

    working = images.working_size(rgb.shape[1], rgb.shape[0], cfg.size)
    total = fresh_frame_iterations(cfg, working)
    if refine_iters is not None:
        total += refine_iterations(working, (rgb.shape[1], rgb.shape[0]), refine_iters)
    return total


def _normalised(pairs) -> dict[str, float]:
    total = sum(w for _, w in pairs)
    return {layer: w / total for layer, w in pairs}


def deepest_layer(cfg: StyleConfig) -> tuple[str | None, int]:
    """The deepest VGG layer ``cfg`` uses and the short edge it needs, px (1 when no known layer).

    Each pooling halves the picture (rounding down); a layer after ``p`` poolings needs a short edge of
    at least ``2**p`` px (relu5_1: 16 px), or its feature map is empty."""
    layers = [name for name, _ in (*cfg.content_layers, *cfg.style_layers) if name in LAYER_NAMES]
    if not layers:
        return None, 1  # VGGEncoder reports unknown names
    deepest = max(layers, key=LAYER_NAMES.index)
    poolings = sum(1 for name in LAYER_NAMES[:LAYER_NAMES.index(deepest)] if name.startswith("pool"))
    return deepest, 2 ** poolings


def check_working_size(cfg: StyleConfig, working: tuple[int, int]) -> None:
    """``InputError`` when the working frames are too small for the deepest VGG layer used."""
    deepest, need = deepest_layer(cfg)
    if min(working) < need:
        raise InputError(f"working size {working[0]}x{working[1]} px is too small for layer {deepest}, "
                         f"which needs a short edge of at least {need} px; raise --size")


def check_image_shape(what: str, path: str | os.PathLike, size: tuple[int, int], long_edge: int,
                      cfg: StyleConfig) -> tuple[int, int]:
    """The size ``(W, H)`` an image of ``size`` px is scaled to for a long edge of ``long_edge`` px;
    ``InputError`` (one line) when that is too thin for the deepest layer used (a 100000x2 px image):
    torch would fail deep inside VGG ("Output size is too small")."""
    scaled = images.working_size(size[0], size[1], long_edge)
    deepest, need = deepest_layer(cfg)
    if min(scaled) < need:
        ratio = max(1, long_edge // need)
        raise InputError(f"{what} {str(path)!r} is {size[0]}x{size[1]} px, scaled to {scaled[0]}x{scaled[1]} px: "
                         f"too thin for layer {deepest}, which needs a short edge of at least {need} px; "
                         f"expected an image at most {ratio} times as long as it is wide")
    return scaled
