"""VGG-19 feature encoder with named layers, and resolution of its weights.

Convention:
    Input images are ``(B, 3, H, W)`` float32 RGB in [0, 1]; the encoder applies ImageNet
    normalisation itself. Layers are named like the paper: ``conv{block}_{n}``, ``relu{block}_{n}``,
    ``pool{block}``. Nothing outside this module indexes into VGG by number.

Weights (``--weights``):
    ``imagenet``  torchvision's ``VGG19_Weights.IMAGENET1K_V1``: read from the torch hub cache, else
                  downloaded; a ``WeightsError`` when neither works.
    ``auto``      as ``imagenet``, but falls back to ``untrained`` with a loud warning.
    ``untrained`` torchvision's VGG-19 initialisation with a fixed seed (tests, offline trials). Output
                  made with it is NOT an ImageNet result.
    PATH          a state dict file (torchvision's key names ``features.N.weight`` or ours ``conv1_1.weight``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from .errors import WeightsError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
UNTRAINED_SEED = 0

# --precision (config.PRECISIONS): the dtype VGG's convolutions run in (None: plain float32).
_AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# Convolutions per block of VGG-19 (configuration "E").
_VGG19_BLOCKS = (2, 2, 4, 4, 4)


def vgg19_layer_names() -> list[str]:
    """All layer names of VGG-19's feature stack, in order (conv, relu, ..., pool)."""
    names = []
    for block, n_convs in enumerate(_VGG19_BLOCKS, start=1):
        for n in range(1, n_convs + 1):
            names += [f"conv{block}_{n}", f"relu{block}_{n}"]
        names.append(f"pool{block}")
    return names


LAYER_NAMES = tuple(vgg19_layer_names())


@dataclass(frozen=True)
class ResolvedWeights:
    """What weights a run used.

    Attributes:
        state_dict: torchvision-style ``features.N.*`` tensors, or None for the seeded initialisation.
        weights_id: stable identifier recorded in the run manifest, e.g. ``imagenet1k_v1`` or
            ``untrained-seed0`` or ``file:<sha256[:16]>``.
        is_imagenet: True only for the real ImageNet weights.
    """

    state_dict: dict | None
    weights_id: str
    is_imagenet: bool


def imagenet_cache_path() -> Path:
    """Where torch hub keeps torchvision's VGG-19 ImageNet weights file."""
    from torchvision.models import VGG19_Weights

    filename = os.path.basename(VGG19_Weights.IMAGENET1K_V1.url)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _load_imagenet_state_dict() -> dict:
    """torchvision's own loading path: hub cache, else download (raises on failure)."""
    from torchvision.models import VGG19_Weights

    # load_state_dict_from_url reads the cache file when present and downloads only otherwise.
    return VGG19_Weights.IMAGENET1K_V1.get_state_dict(progress=False, check_hash=False)


def _how_to_get_imagenet() -> str:
    from torchvision.models import VGG19_Weights

    return (f"download {VGG19_Weights.IMAGENET1K_V1.url} to {imagenet_cache_path()} "
            f"or pass --weights PATH")


def resolve_weights(spec: str) -> ResolvedWeights:
    """Turn a ``--weights`` value into a state dict and an id (see module docstring)."""
    if spec == "untrained":
        return ResolvedWeights(None, f"untrained-seed{UNTRAINED_SEED}", False)
    if spec in ("imagenet", "auto"):
        try:
            state = _load_imagenet_state_dict()
        except Exception as exc:  # network errors, missing cache, corrupt file
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if spec == "imagenet":
                raise WeightsError(f"ImageNet VGG-19 weights unavailable ({reason}); "
                                   f"{_how_to_get_imagenet()}") from exc
            warnings.warn(
                "ImageNet VGG-19 weights unavailable, using UNTRAINED seeded weights: results will "
                f"not look like real neural style transfer. To fix: {_how_to_get_imagenet()}",
                stacklevel=2)
            return ResolvedWeights(None, f"untrained-seed{UNTRAINED_SEED}", False)
        return ResolvedWeights(state, "imagenet1k_v1", True)
    path = Path(spec)
    if not path.is_file():
        raise WeightsError(f"--weights must be auto, imagenet, untrained or a state dict file; "
                           f"got {spec!r} (no such file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot read weights file {str(path)!r}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return ResolvedWeights(_to_torchvision_keys(state, path), f"file:{digest}", False)


def _to_torchvision_keys(state: dict, path: Path) -> dict:
    """Accept torchvision keys (``features.0.weight``) or named keys (``conv1_1.weight``)."""
    if any(k.startswith("features.") for k in state):
        return state
    index_of = {name: i for i, name in enumerate(LAYER_NAMES)}
    out = {}
    for key, value in state.items():
        layer, _, param = key.rpartition(".")
        if layer not in index_of:
            raise WeightsError(f"weights file {str(path)!r} has an unexpected key {key!r}; expected "
                               f"torchvision VGG-19 keys like 'features.0.weight' or 'conv1_1.weight'")
        out[f"features.{index_of[layer]}.{param}"] = value
    return out


def _build_stack(names: Iterable[str], pooling: str) -> "OrderedDict[str, nn.Module]":
    """VGG-19 feature layers by name; conv widths 64, 128, 256, 512, 512 per block."""
    stack: OrderedDict[str, nn.Module] = OrderedDict()
    in_channels = 3
    for name in names:
        if name.startswith("conv"):
            block = int(name[4])
            out_channels = 64 * 2 ** min(block - 1, 3)
            stack[name] = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
            in_channels = out_channels
        elif name.startswith("relu"):
            stack[name] = nn.ReLU(inplace=False)
        else:
            stack[name] = nn.AvgPool2d(2, 2) if pooling == "avg" else nn.MaxPool2d(2, 2)
    return stack


def _seeded_init(stack: "OrderedDict[str, nn.Module]") -> None:
    """torchvision's VGG initialisation (Kaiming normal, fan_out, zero bias) with a fixed seed.

    Layers are initialised in order, so a truncated stack has the same weights as the full one.
    """
    generator = torch.Generator().manual_seed(UNTRAINED_SEED)
    for module in stack.values():
        if isinstance(module, nn.Conv2d):
            fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1]
            std = (2.0 / fan_out) ** 0.5
            with torch.no_grad():
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
                module.bias.zero_()


def _load_torchvision_features(stack: "OrderedDict[str, nn.Module]", state_dict: dict) -> None:
    """Copy torchvision's ``features.N.weight/bias`` into the named (possibly truncated) stack."""
    for position, (name, module) in enumerate(stack.items()):
        if isinstance(module, nn.Conv2d):
            for param in ("weight", "bias"):
                key = f"features.{position}.{param}"
                if key not in state_dict:
                    raise WeightsError(f"VGG-19 weights lack {key!r} ({name}); expected a torchvision "
                                       f"VGG-19 state dict")
                value = state_dict[key]
                target = getattr(module, param)
                if tuple(value.shape) != tuple(target.shape):
                    raise WeightsError(f"VGG-19 weights {key!r} ({name}) have shape {tuple(value.shape)}, "
                                       f"expected {tuple(target.shape)}")
                with torch.no_grad():
                    target.copy_(value)


class VGGEncoder(nn.Module):
    """VGG-19 feature stack truncated after the deepest requested layer.

    ``forward(image)`` returns a dict ``{layer_name: (B, C_l, H_l, W_l) float32 features}`` for the
    requested layers. Parameters are frozen (``requires_grad=False``); the module is in eval mode.

    ``precision``: ``fp32``, or ``bf16``/``fp16``: the convolutions run under autocast in that type
    (tensor cores on CUDA) and the returned features are cast back to float32, so the Gram matrices
    and losses are summed in float32.
    """

    def __init__(self, layers: Iterable[str], weights: ResolvedWeights, *, pooling: str = "avg",
                 precision: str = "fp32"):
        super().__init__()
        self.layers = tuple(dict.fromkeys(layers))
        unknown = [name for name in self.layers if name not in LAYER_NAMES]
        if unknown:
            raise ValueError(f"unknown VGG-19 layer(s) {unknown}; expected names like relu4_2")
        if pooling not in ("avg", "max"):
            raise ValueError(f"pooling must be 'avg' or 'max', got {pooling!r}")
        if precision not in _AUTOCAST_DTYPES:
            raise ValueError(f"--precision must be one of {', '.join(_AUTOCAST_DTYPES)}; got {precision!r}")
        self.autocast_dtype = _AUTOCAST_DTYPES[precision]
        deepest = max(LAYER_NAMES.index(name) for name in self.layers)
        stack = _build_stack(LAYER_NAMES[:deepest + 1], pooling)
        if weights.state_dict is None:
            _seeded_init(stack)
        else:
            _load_torchvision_features(stack, weights.state_dict)
        self.stack = nn.Sequential(stack)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.weights_id = weights.weights_id
        self.requires_grad_(False)
        self.eval()

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (image - self.mean) / self.std
        if self.autocast_dtype is None:
            return self._run_stack(x)
        with torch.autocast(x.device.type, dtype=self.autocast_dtype):
            out = self._run_stack(x)
        return {name: feats.float() for name, feats in out.items()}

    def _run_stack(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        wanted = set(self.layers)
        out = {}
        for name, module in self.stack.named_children():
            x = module(x)
            if name in wanted:
                out[name] = x
        return out
