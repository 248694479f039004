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

    Checked against measurements in docs/BENCHMARKS.md ("Memory model").
"""

from __future__ import annotations

from typing import Sequence

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
    e = _BYTES[precision]
    h, w = height, width
    total = 3 * h * w * (4 + (e if precision != "fp32" else 0))  # the normalised input (+ its cast)
    for name in stack:
        if name.startswith("pool"):
            h, w = h // 2, w // 2
            total += _channels(name) * h * w * e
        elif name.startswith("relu"):
            total += _channels(name) * h * w * e
            if precision != "fp32" and name in read_layers:
                total += _channels(name) * h * w * 4
    return total


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


def choose_tile(height: int, width: int, stack: Sequence[str], *, budget_bytes: int, halo: int,
                precision: str = "fp32", read_layers: Sequence[str] = (), history_size: int = 50,
                weights_bytes: int = 0, align: int = 16) -> int | None:
    """The largest tile (px a side, a multiple of ``align``) whose peak fits ``budget_bytes``, or None
    when the whole frame fits untiled.

    The frame's own tensors and the L-BFGS history are whole-frame whatever the tile; VGG's activations
    are one crop's (tile plus a halo on each side). Raises ValueError when not even a ``4 * align`` px
    tile fits: then the history (or the size) is what must shrink.
    """
    whole = estimate_peak_bytes(height, width, stack, precision=precision, read_layers=read_layers,
                                history_size=history_size, weights_bytes=weights_bytes)
    if whole["total"] <= budget_bytes:
        return None
    fixed = whole["frame_tensors"] + whole["lbfgs"] + weights_bytes
    # A no-grad pass keeps the Gram sums; the grad pass one crop's activations and transient set.
    tile = max(height, width) // align * align
    crop = 0
    while tile >= 4 * align:
        crop_h, crop_w = min(height, tile + 2 * halo), min(width, tile + 2 * halo)
        crop = (vgg_activation_bytes(crop_h, crop_w, stack, precision=precision, read_layers=read_layers)
                + transient_bytes(crop_h, crop_w, precision=precision))
        if fixed + crop <= budget_bytes:
            return tile
        tile -= align
    raise ValueError(f"{width}x{height} px needs at least {(fixed + crop) / 2**20:.0f} MiB (the frame, its "
                     f"L-BFGS history of {history_size} pairs and the weights {fixed / 2**20:.0f} MiB, the "
                     f"smallest tile's VGG {crop / 2**20:.0f} MiB), more than {budget_bytes / 2**20:.0f} MiB")


def available_memory() -> int | None:
    """Bytes of memory available to new work (Linux ``MemAvailable``), None where unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
