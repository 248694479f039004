"""Memory model of one frame's optimisation: what is held at the peak of an iteration.

Convention:
    Sizes are ``height, width`` in px of the optimised image; results are bytes. The model counts the
    tensors an L-BFGS iteration keeps alive, not the allocator's rounding or the CUDA context (about
    0.5 GiB on a GPU, outside torch's allocator):

    - VGG activations saved for the backward pass: every ReLU and pooling output up to the deepest layer
      used (a convolution saves its input, which is the previous ReLU or pooling output; a ReLU saves
      its output), in the precision the convolutions run in (2 bytes under bf16/fp16 autocast), plus
      the input cast to that type; the layers the losses read are also copied to float32 under autocast;
    - the transient peak of the backward pass: the largest convolution output and two gradients of its
      size;
    - per-frame images: the variable, its gradient, content, init, warped previous frames and masks
      (about 8 ``3 x H x W`` float32 tensors), and the content target at ``relu4_2``;
    - L-BFGS: ``history_size`` pairs of flattened ``3 x H x W`` float32 vectors (s and y), plus a few
      working vectors. At 3840x2160 the default 50 pairs alone are 10 GB: the history, not VGG, sets
      the largest size that fits.

    With tiles (:func:`plan_memory`), VGG's terms are one crop's; with bands (fp32 on the CPU),
    :func:`banded_bytes`'; the frame's tensors and the history stay whole-frame. Checked against
    measurements in docs/BENCHMARKS.md ("Memory model", "Tiled optimisation", "Bands").
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Sequence

from videostyle.config import BANDS
from videostyle.model.tiling import ALIGN, BAND_BYTES, band_context, band_rows, largest_crop, tile_grid, vgg_blocks

_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def _channels(layer: str) -> int:
    """Output channels of a VGG layer named ``conv{b}_{n}``/``relu{b}_{n}``/``pool{b}``."""
    block = int(layer[4]) if layer.startswith(("conv", "relu", "pool")) else 1
    return 64 * 2 ** min(block - 1, 3)


def vgg_activation_bytes(height: int, width: int, stack: Sequence[str], *, precision: str = "fp32",
                         read_layers: Sequence[str] = ()) -> int:
    """Bytes of VGG activations alive at the end of the forward pass.

    Args:
        stack: the layer names of the (truncated) stack in order, e.g. ``conv1_1, relu1_1, ...``.
        precision: ``fp32``, ``bf16`` or ``fp16`` (the convolutions' autocast type).
        read_layers: the layers the losses read (copied to float32 under autocast).
    """
    cast = _BYTES[precision] if precision != "fp32" else 0
    return 3 * height * width * (4 + cast) + _layer_bytes(height, width, stack, precision, read_layers)


def _layer_bytes(height: int, width: int, stack: Sequence[str], precision: str, read_layers: Sequence[str]) -> int:
    """The ReLU and pooling outputs of ``stack`` run on a ``height x width`` map (see
    :func:`vgg_activation_bytes`)."""
    e = _BYTES[precision]
    h, w = height, width
    total = 0
    for name in stack:
        if name.startswith("pool"):
            h, w = h // 2, w // 2
            total += _channels(name) * h * w * e
        elif name.startswith("relu"):
            total += _channels(name) * h * w * e
            if precision != "fp32" and name in read_layers:
                total += _channels(name) * h * w * 4
    return total


# What the banded objective's backward pass holds beyond the tensors banded_bytes names, measured as the
# process's RSS at its peak at 960x540 and 1920x1080 (docs/BENCHMARKS.md, "Bands"; glibc's threshold at
# 16 MiB as --max-memory sets it, the heap trimmed before each block): about 14 more band maps (oneDNN's
# and autograd's temporaries in a band's backward pass, and the heap's pieces around them) and 82 bytes
# a px of the frame.
BAND_EXTRA_MAPS = 14
BANDED_EXTRA_PER_PX = 82


def banded_bytes(height: int, width: int, stack: Sequence[str], *, band_bytes: int = BAND_BYTES) -> int:
    """VGG's bytes at the peak of :class:`~videostyle.model.banded.BandedObjective` (fp32), the larger of
    its two passes over the blocks (:func:`~videostyle.model.tiling.vgg_blocks`) of a ``height x width``
    frame, the frame itself not counted (:func:`frame_bytes` has it).

    Forward, at block ``k``: the outputs of the blocks before it (kept), its own output, and one band
    run without a graph (its input rows and three maps). Backward, at block ``k``: the inputs of the
    blocks up to it, the gradient at its output and at its input, and one band with its graph (its input
    rows and their gradient, its ReLU and pooling outputs, and a convolution output with two gradients),
    and what was measured beyond those (:data:`BAND_EXTRA_MAPS`, :data:`BANDED_EXTRA_PER_PX`).
    """
    blocks = vgg_blocks(stack)
    h, w, c_in = height, width, 3
    maps = []  # per block: (input bytes, output bytes or 0 for the last, one band's no-grad and grad bytes)
    for i, block in enumerate(blocks):
        convs = sum(name.startswith("conv") for name in block)
        relus = sum(name.startswith("relu") for name in block)
        c = _channels(block[0])
        pooled = block[-1].startswith("pool")
        rows = min(h, band_rows(c, w, convs, band_bytes) + band_context(convs))
        input_bytes = c_in * h * w * 4
        out_h, out_w = (h // 2, w // 2) if pooled else (h, w)
        out_bytes = c * out_h * out_w * 4 if i < len(blocks) - 1 else 0
        band_map = c * rows * w * 4
        no_grad = c_in * rows * w * 4 + 3 * band_map
        with_grad = (2 * c_in * rows * w * 4 + relus * band_map + (band_map // 4 if pooled else 0)
                     + (3 + BAND_EXTRA_MAPS) * band_map)
        maps.append((input_bytes, out_bytes, no_grad, with_grad))
        h, w, c_in = out_h, out_w, c
    frame_input = maps[0][0]  # the frame itself: in frame_bytes
    kept = [m[0] for m in maps]
    forward = max(sum(kept[1:k + 1]) + maps[k][1] + maps[k][2] for k in range(len(maps)))
    backward = max(sum(kept[1:k + 1]) + maps[k][1] + (maps[k][0] if k else frame_input) + maps[k][3]
                   for k in range(len(maps)))
    return max(forward, backward) + BANDED_EXTRA_PER_PX * height * width


def transient_bytes(height: int, width: int, *, precision: str = "fp32") -> int:
    """The backward pass's working set at the first block: a conv output and two gradients of its size."""
    return 3 * 64 * height * width * _BYTES[precision]


def lbfgs_bytes(height: int, width: int, *, history_size: int) -> int:
    """L-BFGS's history (``history_size`` s/y pairs) and its ~4 working vectors, float32."""
    return (2 * history_size + 4) * 3 * height * width * 4


def frame_bytes(height: int, width: int) -> int:
    """Per-frame images (~8 ``3 x H x W`` float32) and the relu4_2 content target (float32)."""
    return 8 * 3 * height * width * 4 + 512 * (height // 8) * (width // 8) * 4


def estimate_peak_bytes(height: int, width: int, stack: Sequence[str], *, precision: str = "fp32",
                        read_layers: Sequence[str] = (), history_size: int = 50,
                        weights_bytes: int = 0) -> dict[str, int]:
    """The model's terms and their ``total`` for one frame at ``height x width``.

    ``weights_bytes``: the VGG parameters on the device (float32).
    """
    terms = {
        "vgg_activations": vgg_activation_bytes(height, width, stack, precision=precision,
                                                read_layers=read_layers),
        "backward_transient": transient_bytes(height, width, precision=precision),
        "frame_tensors": frame_bytes(height, width),
        "lbfgs": lbfgs_bytes(height, width, history_size=history_size),
        "weights": weights_bytes,
    }
    terms["total"] = sum(terms.values())
    return terms


# A memory plan keeps the L-BFGS history the config asks for while tiles this large (or the grid they
# make) fit: beyond that, fewer correction pairs cost less than smaller tiles, whose overlap makes
# every iteration slower (docs/BENCHMARKS.md, "Tiled optimisation").
EFFICIENT_TILE = 1024

# The fewest L-BFGS correction pairs a plan goes down to (neural-style's multi-resolution recipe uses 5
# at its largest sizes).
MIN_HISTORY = 5


@dataclass(frozen=True)
class MemoryPlan:
    """How one frame's optimisation fits a memory budget.

    Attributes:
        tile: VGG runs on tiles of at most this many px a side (:func:`videostyle.model.tiling.plan_tiles`);
            :data:`BANDS`: block by block in bands (:mod:`videostyle.model.banded`); None: on the whole frame.
        history: L-BFGS correction pairs kept (at most the config's).
        peak_bytes: the model's peak for this plan.
    """

    tile: int | str | None
    history: int
    peak_bytes: int


def tiled_peak_bytes(height: int, width: int, stack: Sequence[str], *, tile: int, halo: int,
                     precision: str = "fp32", read_layers: Sequence[str] = (), history_size: int = 50,
                     weights_bytes: int = 0) -> int:
    """The model's peak for frames of ``height x width`` optimised with VGG on tiles of ``tile`` px: the
    frame's own tensors and the L-BFGS history (whole-frame whatever the tile) plus the largest crop's
    VGG activations and backward transient."""
    crop_h, crop_w = largest_crop(height, width, tile=tile, halo=halo)
    crop = (vgg_activation_bytes(crop_h, crop_w, stack, precision=precision, read_layers=read_layers)
            + transient_bytes(crop_h, crop_w, precision=precision))
    return frame_bytes(height, width) + lbfgs_bytes(height, width, history_size=history_size) + weights_bytes + crop


def choose_tile(height: int, width: int, stack: Sequence[str], *, budget_bytes: int, halo: int,
                precision: str = "fp32", read_layers: Sequence[str] = (), history_size: int = 50,
                weights_bytes: int = 0) -> int | None:
    """The largest tile (px a side, a multiple of :data:`~videostyle.model.tiling.ALIGN`) whose peak fits
    ``budget_bytes`` at ``history_size``, or None when none does (not even ``4 * ALIGN`` px)."""
    tile = -(-max(height, width) // ALIGN) * ALIGN
    grid = None
    while tile >= 4 * ALIGN:
        if tile_grid(height, width, tile) != grid:  # the same grid, the same crops: checked once
            grid = tile_grid(height, width, tile)
            if tiled_peak_bytes(height, width, stack, tile=tile, halo=halo, precision=precision,
                                read_layers=read_layers, history_size=history_size,
                                weights_bytes=weights_bytes) <= budget_bytes:
                return tile
        tile -= ALIGN
    return None


def plan_memory(height: int, width: int, stack: Sequence[str], *, budget_bytes: int, halo: int,
                precision: str = "fp32", read_layers: Sequence[str] = (), history_size: int = 50,
                weights_bytes: int = 0, bands: bool = False, overhead: float = 1.0) -> MemoryPlan:
    """The plan for frames of ``height x width`` px in ``budget_bytes``: untiled when the whole frame fits
    at ``history_size``. Else, with ``bands`` (:func:`~videostyle.model.banded.uses_bands`): VGG in bands,
    with as many correction pairs as fit (down to :data:`MIN_HISTORY`). Else (or where not even that
    fits) tiles, keeping the history while the tile grid is no finer than :data:`EFFICIENT_TILE`'s;
    else fewer correction pairs (down to :data:`MIN_HISTORY`) for tiles that large; else the largest
    tile that fits at :data:`MIN_HISTORY`.

    ``overhead``: the measured peak over the model's for the untiled and tiled estimates (the
    allocator's pieces, oneDNN's and cuDNN's scratch): they must fit ``budget_bytes / overhead``. The
    banded estimate was fitted to the measured peak (:func:`banded_bytes`) and fits ``budget_bytes``.
    ``peak_bytes`` is the model's, without the overhead.

    Raises ValueError when nothing fits with the fewest pairs (not even a ``4 * ALIGN`` px tile: bands,
    which hold more of the whole frame, fit less): then the size is what must shrink.
    """
    kw = dict(precision=precision, read_layers=read_layers, weights_bytes=weights_bytes)
    whole = estimate_peak_bytes(height, width, stack, history_size=history_size, **kw)["total"]
    modelled_budget = int(budget_bytes / overhead)
    if whole <= modelled_budget:
        return MemoryPlan(None, history_size, whole)
    fewest = min(MIN_HISTORY, history_size)
    if bands:
        vgg = banded_bytes(height, width, stack)
        for history in range(history_size, fewest - 1, -1):
            peak = frame_bytes(height, width) + weights_bytes + lbfgs_bytes(height, width, history_size=history) + vgg
            if peak <= budget_bytes:
                return MemoryPlan(BANDS, history, peak)
        # Bands keep the block outputs and two gradients of the whole frame: where even the fewest pairs
        # do not fit, tiles, whose crops can shrink (the model's largest 16:9 frame in 2.5 GiB: 2752x1548
        # in bands, 3840x2160 on tiles).
    efficient = tile_grid(height, width, EFFICIENT_TILE)
    for history in range(history_size, fewest - 1, -1):
        tile = choose_tile(height, width, stack, budget_bytes=modelled_budget, halo=halo, history_size=history, **kw)
        if tile is None:
            continue
        rows, cols = tile_grid(height, width, tile)
        if rows * cols <= efficient[0] * efficient[1] or history == fewest:
            return MemoryPlan(tile, history, tiled_peak_bytes(height, width, stack, tile=tile, halo=halo,
                                                              history_size=history, **kw))
    smallest = tiled_peak_bytes(height, width, stack, tile=4 * ALIGN, halo=halo, history_size=fewest, **kw)
    fixed = frame_bytes(height, width) + lbfgs_bytes(height, width, history_size=fewest) + weights_bytes
    raise ValueError(f"{width}x{height} px needs at least {smallest / 2**20:.0f} MiB (the frame, its L-BFGS "
                     f"history of {fewest} pairs and the weights {fixed / 2**20:.0f} MiB, the smallest tile's "
                     f"VGG {(smallest - fixed) / 2**20:.0f} MiB), more than {modelled_budget / 2**20:.0f} MiB")


def release_free_memory() -> None:
    """Give memory freed but kept by glibc's allocator back to the system (``malloc_trim``; nothing
    elsewhere): the pieces a coarse octave's or the style pass's tensors leave may not fit the next
    tensors' sizes. Measured at 1080p, the peak did not change with it (docs/BENCHMARKS.md, "Tiled
    optimisation"), but :func:`resident_memory` then counts only what is held."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


# glibc serves a large block with a mapping of its own, returned to the system when freed, only above
# its mmap threshold; each time such a block is freed the threshold rises to its size (up to 32 MiB), so
# later blocks come from the heap, which keeps them when freed. Measured on a 1080x1920 tiled frame
# (docs/BENCHMARKS.md, "Tiled optimisation"), peak RSS and time against glibc's own (1927 MiB): fixed at
# 16 MiB, 1619 MiB for 6% more time; at 8, 4 or 1 MiB about 1400 MiB, but 25-30% more time (the
# first block's strips then got fresh pages every time); at 32 MiB no gain. The bands' maps stay under
# it (tiling.BAND_BYTES), so they are reused from the heap.
MMAP_THRESHOLD = 16 << 20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter (malloc.h)


def return_freed_memory_at_once() -> None:
    """Makes glibc give blocks of :data:`MMAP_THRESHOLD` and more back to the system as soon as they are
    freed (``mallopt(M_MMAP_THRESHOLD)``; fixing it also stops it rising), so the process's resident
    memory follows the tensors it holds. Costs a fresh mapping (page faults) for each large tensor.
    Nothing where the C library is not glibc."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass


def resident_memory() -> int | None:
    """Bytes this process holds in RAM now (Linux ``VmRSS``), None where unknown; after
    :func:`release_free_memory`, so memory the allocator would reuse is not counted as held."""
    release_free_memory()
    return _proc_bytes("/proc/self/status", "VmRSS:")


def available_memory() -> int | None:
    """Bytes of memory available to new work (Linux ``MemAvailable``), None where unknown."""
    return _proc_bytes("/proc/meminfo", "MemAvailable:")


def _proc_bytes(path: str, key: str) -> int | None:
    """The ``key`` line of a Linux ``/proc`` file given in kB (``VmRSS:  1234 kB``), in bytes; None where
    the file or the line is missing or unreadable."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
