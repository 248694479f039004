"""VGG-19 / VGG-16 feature encoders with named layers, and resolution of their weights.

Convention:
    Input images are ``(B, 3, H, W)`` float32 RGB in [0, 1]; the encoder applies ImageNet
    normalisation itself. Layers are named like the paper: ``conv{block}_{n}``, ``relu{block}_{n}``,
    ``pool{block}``. Nothing outside this module indexes into VGG by number.

Models (``--model``): ``vgg19`` (configuration "E", 16 convs, relu1_1..relu5_4) or ``vgg16``
(configuration "D", 13 convs, relu1_1..relu5_3: no relu3_4, relu4_4, relu5_4). Both keep torchvision's
``features.N`` positions, so a torchvision state dict of either loads as it is.

Weights (``--weights``):
    ``imagenet``  torchvision's ``VGG19_Weights.IMAGENET1K_V1`` (``VGG16_Weights.IMAGENET1K_V1`` with
                  ``--model vgg16``): read from the torch hub cache, else downloaded into it; a
                  ``WeightsError`` when neither works.
    ``auto``      as ``imagenet``, but falls back to ``untrained`` with a loud warning when the file is
                  missing and cannot be downloaded (a file that is there but bad is still an error).
    ``untrained`` torchvision's VGG initialisation with a fixed seed (tests, offline trials). Output
                  made with it is NOT an ImageNet result.
    ``hed``       the trained VGG-16 conv stack of the HED edge detector, "VGG-16 (HED fine-tune of
                  ImageNet VGG-16)", converted offline by ``scripts/trained_weights.py`` into
                  :func:`trained_weights_path` (``--model vgg16`` only). Not ImageNet weights.
    PATH          a state dict file of either model (torchvision's key names ``features.N.weight`` or
                  ours ``conv1_1.weight``); a file of the other model than ``--model`` is an error.

Safety: every weights file, the torch hub cache included, is read with ``torch.load(weights_only=True)``
(no pickled code runs), and a hub cache file must match the sha256 prefix in its name
(``vgg19-dcbb9e9d.pth``), as torch hub's ``check_hash`` would. A bad file is a one-line
``WeightsError`` naming its path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from videostyle.errors import WeightsError
from videostyle.vgg_layers import (LAYER_NAMES, MODEL_NAMES, MODELS, check_layers, layer_names,  # noqa: F401
                                   vgg19_layer_names)

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
UNTRAINED_SEED = 0

# --precision (config.PRECISIONS): the dtype VGG's convolutions run in (None: plain float32).
_AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# --weights values that are not paths.
WEIGHTS_NAMES = ("auto", "imagenet", "untrained", "hed")
# What the trained VGG-16 conv stack is, wherever a figure or a message names it.
HED_LABEL = "VGG-16 (HED fine-tune of ImageNet VGG-16)"
HED_WEIGHTS_ID = "vgg16-hed-bsds500"
TRAINED_FILENAME = "vgg16-hed-bsds500.pth"
WEIGHTS_DIR_ENV = "VIDEOSTYLE_WEIGHTS_DIR"


def _conv_positions(model: str) -> dict[int, str]:
    """torchvision ``features.N`` position -> conv name, for ``model``."""
    return {i: name for i, name in enumerate(layer_names(model)) if name.startswith("conv")}


def trained_weights_path() -> Path:
    """Where ``scripts/trained_weights.py`` caches the trained VGG-16 conv stack (see :data:`HED_LABEL`):
    ``$VIDEOSTYLE_WEIGHTS_DIR/vgg16-hed-bsds500.pth``, the dir defaulting to ``~/.cache/videostyle/weights``.

    The file is a plain torchvision-key VGG-16 state dict (``features.N.weight/bias``, conv layers only),
    taking torchvision's input convention (RGB in [0, 1], ImageNet mean/std), loadable with
    ``--model vgg16 --weights PATH`` or ``--weights hed``. Kept outside ``$TORCH_HOME`` on purpose.
    """
    root = os.environ.get(WEIGHTS_DIR_ENV) or os.path.join("~", ".cache", "videostyle", "weights")
    return Path(root).expanduser() / TRAINED_FILENAME


@dataclass(frozen=True)
class ResolvedWeights:
    """What weights a run used.

    Attributes:
        state_dict: torchvision-style ``features.N.*`` tensors, or None for the seeded initialisation.
        weights_id: stable identifier recorded in the run manifest, e.g. ``imagenet1k_v1`` or
            ``untrained-seed0`` or ``file:<sha256[:16]>`` (VGG-19); VGG-16 ids start ``vgg16-``, e.g.
            ``vgg16-imagenet1k_v1``, ``vgg16-untrained-seed0``, ``vgg16-hed-bsds500``.
        is_imagenet: True only for the real ImageNet weights.
        model: ``vgg19`` or ``vgg16``.
    """

    state_dict: dict | None
    weights_id: str
    is_imagenet: bool
    model: str = "vgg19"

    @property
    def label(self) -> str:
        """How figures and messages name these weights, e.g. ``untrained VGG-19``."""
        arch = MODEL_NAMES[self.model]
        if self.weights_id.endswith(HED_WEIGHTS_ID):
            return HED_LABEL
        if self.is_imagenet:
            return f"ImageNet {arch}"
        if self.state_dict is None:
            return f"untrained {arch}"
        return f"{arch} from {self.weights_id}"


def _imagenet_enum(model: str):
    from torchvision.models import VGG16_Weights, VGG19_Weights

    return {"vgg19": VGG19_Weights, "vgg16": VGG16_Weights}[model].IMAGENET1K_V1


def _imagenet_url(model: str) -> str:
    return _imagenet_enum(model).url


def imagenet_cache_path(model: str = "vgg19") -> Path:
    """Where torch hub keeps torchvision's ImageNet weights file of ``model``."""
    filename = os.path.basename(_imagenet_url(model))
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _expected_hash_prefix(path: Path) -> str | None:
    """The sha256 prefix torch hub puts in a file name (``vgg19-dcbb9e9d.pth`` -> ``dcbb9e9d``)."""
    match = re.search(r"-([a-f0-9]{6,64})\.", path.name)
    return match.group(1) if match else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_state_dict(path: Path, *, hash_prefix: str | None = None) -> tuple[dict, str]:
    """Read a weights file safely: sha256 checked against ``hash_prefix`` (when given) BEFORE it is
    unpickled, then ``torch.load(weights_only=True)``. Returns ``(state dict, sha256 hex)``.

    Raises:
        WeightsError: one line naming ``path``: unreadable, wrong hash, refused pickle, not a dict.
    """
    try:
        digest = _sha256(path)
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {str(path)!r}: {exc.strerror or exc}") from exc
    if hash_prefix and not digest.startswith(hash_prefix):
        raise WeightsError(f"weights file {str(path)!r} is damaged or not the published file: its sha256 "
                           f"starts {digest[:len(hash_prefix)]}, expected {hash_prefix} (the prefix in its "
                           f"name); delete it to download it again")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError (code refused), truncated zip, ...
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise WeightsError(f"cannot read weights file {str(path)!r} as a plain state dict "
                           f"(weights_only=True refused or failed: {reason})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {str(path)!r} holds {type(state).__name__}, expected a state dict "
                           f"of tensors")
    return state, digest


def _download(url: str, dest: Path, hash_prefix: str | None) -> None:
    """torch hub's download (temp file, sha256 prefix checked, then moved into place)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(dest), hash_prefix=hash_prefix, progress=False)


def _how_to_get_imagenet(model: str = "vgg19") -> str:
    return (f"download {_imagenet_url(model)} to {imagenet_cache_path(model)} "
            f"or pass --weights PATH")


def _load_imagenet_state_dict(model: str = "vgg19") -> dict:
    """The hub cache file, downloaded first only when missing; read with :func:`_read_state_dict`.

    Raises:
        FileNotFoundError / OSError / URLError: missing and the download failed (``auto`` falls back).
        WeightsError: the file is there but bad (never falls back).
    """
    path = imagenet_cache_path(model)
    prefix = _expected_hash_prefix(path)
    if not path.is_file():
        _download(_imagenet_url(model), path, prefix)
    return _read_state_dict(path, hash_prefix=prefix)[0]


def _untrained(model: str) -> ResolvedWeights:
    prefix = "" if model == "vgg19" else f"{model}-"
    return ResolvedWeights(None, f"{prefix}untrained-seed{UNTRAINED_SEED}", False, model)


def resolve_weights(spec: str, model: str = "vgg19") -> ResolvedWeights:
    """Turn a ``--weights`` value and a ``--model`` into a state dict and an id (module docstring)."""
    layer_names(model)  # validates model
    arch = MODEL_NAMES[model]
    prefix = "" if model == "vgg19" else f"{model}-"
    if spec == "untrained":
        return _untrained(model)
    if spec in ("imagenet", "auto"):
        try:
            state = _load_imagenet_state_dict(model)
        except WeightsError:
            raise
        except Exception as exc:  # network errors, missing cache
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if spec == "imagenet":
                raise WeightsError(f"ImageNet {arch} weights unavailable ({reason}); "
                                   f"{_how_to_get_imagenet(model)}") from exc
            warnings.warn(
                f"ImageNet {arch} weights unavailable, using UNTRAINED seeded weights: results will "
                f"not look like real neural style transfer. To fix: {_how_to_get_imagenet(model)}"
                + (", or use the trained VGG-16 offline: python scripts/trained_weights.py, then "
                   "--model vgg16 --weights hed"),
                stacklevel=2)
            return _untrained(model)
        state = _features_only(state)
        _check_model(state, model, imagenet_cache_path(model))
        return ResolvedWeights(state, f"{prefix}imagenet1k_v1", True, model)
    if spec == "hed":
        path = trained_weights_path()
        if model != "vgg16":
            raise WeightsError(f"--weights hed is {HED_LABEL}; it needs --model vgg16, got --model {model}")
        if not path.is_file():
            raise WeightsError(f"{HED_LABEL} weights not found at {str(path)!r}; make them offline with "
                               f"`python scripts/trained_weights.py` (or python -m videostyle.model.trained)")
    else:
        path = Path(spec)
        if not path.is_file():
            raise WeightsError(f"--weights must be {', '.join(WEIGHTS_NAMES)} or a state dict file; "
                               f"got {spec!r} (no such file)")
    state, digest = _read_state_dict(path)
    state = _to_torchvision_keys(state, path, model)
    _check_model(state, model, path)
    trained = trained_weights_path()
    if spec == "hed" or (trained.is_file() and path.resolve() == trained.resolve()):
        return ResolvedWeights(state, HED_WEIGHTS_ID, False, model)
    return ResolvedWeights(state, f"{prefix}file:{digest[:16]}", False, model)


def _features_only(state: dict) -> dict:
    """Drop the classifier of a full torchvision file (only ``features.*`` is used)."""
    return {k: v for k, v in state.items() if k.startswith("features.")}


def _check_model(state: dict, model: str, path: Path) -> None:
    """``WeightsError`` when the state dict's conv positions belong to the other VGG than ``model``."""
    positions = {int(m.group(1)) for k in state if (m := re.match(r"features\.(\d+)\.weight$", k))}
    mine = set(_conv_positions(model))
    if positions <= mine:
        return
    others = [m for m in MODELS if m != model and positions <= set(_conv_positions(m))]
    what = f"a {MODEL_NAMES[others[0]]} state dict" if others else "no VGG-19 or VGG-16 state dict"
    stray = ", ".join(f"features.{p}" for p in sorted(positions - mine)[:3])
    raise WeightsError(f"weights file {str(path)!r} is {what} (it has {stray}), but --model is {model} "
                       f"({MODEL_NAMES[model]})"
                       + (f"; pass --model {others[0]}" if others else ""))


def _to_torchvision_keys(state: dict, path: Path, model: str = "vgg19") -> dict:
    """Accept torchvision keys (``features.0.weight``) or named keys (``conv1_1.weight``)."""
    if any(k.startswith("features.") for k in state):
        return _features_only(state)
    names = layer_names(model)
    index_of = {name: i for i, name in enumerate(names)}
    out = {}
    for key, value in state.items():
        layer, _, param = key.rpartition(".")
        if layer not in index_of:
            others = [m for m in MODELS if m != model and layer in layer_names(m)]
            hint = f" (a {MODEL_NAMES[others[0]]} layer; pass --model {others[0]})" if others else ""
            raise WeightsError(f"weights file {str(path)!r} has an unexpected key {key!r}{hint}; expected "
                               f"torchvision {MODEL_NAMES[model]} keys like 'features.0.weight' or "
                               f"'conv1_1.weight'")
        out[f"features.{index_of[layer]}.{param}"] = value
    return out


def _build_stack(names: Iterable[str], pooling: str) -> "OrderedDict[str, nn.Module]":
    """VGG feature layers by name (either model); conv widths 64, 128, 256, 512, 512 per block."""
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


def _load_torchvision_features(stack: "OrderedDict[str, nn.Module]", state_dict: dict,
                               arch: str = "VGG-19") -> None:
    """Copy torchvision's ``features.N.weight/bias`` into the named (possibly truncated) stack."""
    for position, (name, module) in enumerate(stack.items()):
        if isinstance(module, nn.Conv2d):
            for param in ("weight", "bias"):
                key = f"features.{position}.{param}"
                if key not in state_dict:
                    raise WeightsError(f"{arch} weights lack {key!r} ({name}); expected a torchvision "
                                       f"{arch} state dict")
                value = state_dict[key]
                target = getattr(module, param)
                if tuple(value.shape) != tuple(target.shape):
                    raise WeightsError(f"{arch} weights {key!r} ({name}) have shape {tuple(value.shape)}, "
                                       f"expected {tuple(target.shape)}")
                with torch.no_grad():
                    target.copy_(value)


# fp16 holds 6e-8..65504. The losses' gradients at the features are tiny (divided by the positions and
# the targets' power), so in an fp16 backward most of them flushed to zero: on an H200 an fp16 frame came
# out as the photo, barely painted (docs/BENCHMARKS.md, "GPU: the second run"). So the backward through the
# fp16 stack is scaled: the largest feature gradient is brought to this power of two, which leaves 2^16
# of headroom for the gradients to grow on their way back to the image.
FP16_GRAD_PEAK = 1.0


class _GradScale:
    """The scale of one fp16 backward pass: set where the features' gradients enter the stack, read
    where the image's gradient leaves it (a 0-d float32 tensor: no read-back to the host)."""

    __slots__ = ("value",)

    def __init__(self):
        self.value: torch.Tensor | None = None


class _ScaleFeatureGrads(torch.autograd.Function):
    """Forward: the fp16 features cast to float32. Backward: their float32 gradients times one power of
    two, chosen so that the largest is :data:`FP16_GRAD_PEAK`, then cast to fp16 for the stack."""

    @staticmethod
    def forward(ctx, scale: _GradScale, *features: torch.Tensor):
        ctx.scale, ctx.dtypes = scale, [f.dtype for f in features]
        return tuple(f.float() for f in features)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        peak = torch.stack([g.abs().amax() for g in grads]).amax().clamp_min(1e-30)
        ctx.scale.value = torch.exp2(torch.floor(torch.log2(FP16_GRAD_PEAK / peak)))
        return (None, *((g * ctx.scale.value).to(dtype) for g, dtype in zip(grads, ctx.dtypes)))


class _UnscaleImageGrad(torch.autograd.Function):
    """Identity forward; backward divides the image's gradient by the scale :class:`_ScaleFeatureGrads`
    applied (autograd runs that backward first: it is downstream)."""

    @staticmethod
    def forward(ctx, scale: _GradScale, image: torch.Tensor):
        ctx.scale = scale
        return image.view_as(image)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, grad / ctx.scale.value


class VGGEncoder(nn.Module):
    """VGG-19 or VGG-16 feature stack (``weights.model``) truncated after the deepest requested layer.

    ``forward(image)`` returns a dict ``{layer_name: (B, C_l, H_l, W_l) float32 features}`` for the
    requested layers. Parameters are frozen (``requires_grad=False``); the module is in eval mode.

    ``precision``: ``fp32``, or ``bf16``/``fp16``: the convolutions run under autocast in that type
    (tensor cores on CUDA) and the returned features are cast back to float32, so the Gram matrices
    and losses are summed in float32. fp16's backward is scaled so its gradients do not underflow
    (:data:`FP16_GRAD_PEAK`).
    """

    def __init__(self, layers: Iterable[str], weights: ResolvedWeights, *, pooling: str = "avg",
                 precision: str = "fp32"):
        super().__init__()
        self.layers = tuple(dict.fromkeys(layers))
        self.model = weights.model
        names = layer_names(self.model)
        check_layers(self.layers, self.model)
        if pooling not in ("avg", "max"):
            raise ValueError(f"pooling must be 'avg' or 'max', got {pooling!r}")
        if precision not in _AUTOCAST_DTYPES:
            raise ValueError(f"--precision must be one of {', '.join(_AUTOCAST_DTYPES)}; got {precision!r}")
        self.precision = precision
        self.autocast_dtype = _AUTOCAST_DTYPES[precision]
        deepest = max(names.index(name) for name in self.layers)
        stack = _build_stack(names[:deepest + 1], pooling)
        if weights.state_dict is None:
            _seeded_init(stack)
        else:
            _load_torchvision_features(stack, weights.state_dict, MODEL_NAMES[self.model])
        self.stack = nn.Sequential(stack)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.weights_id = weights.weights_id
        self.requires_grad_(False)
        self.eval()

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        """``image`` ``(B, 3, H, W)`` in [0, 1] as VGG takes it (ImageNet mean and std)."""
        return (image - self.mean) / self.std

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.normalise(image)
        if self.autocast_dtype is None:
            return self._run_stack(x)
        scaled = self.autocast_dtype is torch.float16 and torch.is_grad_enabled()
        if scaled:
            scale = _GradScale()
            x = _UnscaleImageGrad.apply(scale, x)
        with torch.autocast(x.device.type, dtype=self.autocast_dtype):
            out = self._run_stack(x)
        if scaled:
            return dict(zip(out, _ScaleFeatureGrads.apply(scale, *out.values())))
        return {name: feats.float() for name, feats in out.items()}

    def _run_stack(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return run_layers(self.stack.named_children(), x, self.layers)[1]


def run_layers(modules: Iterable[tuple[str, nn.Module]], x: torch.Tensor,
               wanted: Iterable[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Runs ``modules`` in order on ``x``: the last output, and ``{name: output}`` for the ``wanted``."""
    wanted = set(wanted)
    out = {}
    for name, module in modules:
        x = module(x)
        if name in wanted:
            out[name] = x
    return x, out
