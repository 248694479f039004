"""The CUDA path gives the CPU's results: features, losses, warp, warm start, optimisation, a whole run.

Marked ``cuda``: they skip where no CUDA device is present (CI, these machines) and run in
``scripts/gpu_check.py`` (``pytest -m cuda``) on a GPU. They compare true float32 on both sides: TF32
(cuDNN's default for convolutions, 10-bit mantissa) is turned off here. With it on, ten L-BFGS steps on
a 48x64 image ended 0.010 apart on average (H200, docs/BENCHMARKS.md): the run's own fp32 path keeps
TF32 for speed, and its effect on a result is what the GPU check's quality section measures.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from common import make_clip
from PIL import Image

from videostyle.model import losses
from videostyle.model.features import VGGEncoder, resolve_weights
from videostyle.motion.flow import warp
from videostyle.model.optimise import FrameObjective, LossWeights, TemporalTerm, compute_style_targets, stylize_frame
from videostyle.motion.temporal import initial_image, mask_tensor, warm_start_mask, warp_previous

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

STYLE = {"relu1_1": 0.5, "relu2_1": 0.5}


@pytest.fixture(autouse=True)
def _true_float32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
CONTENT = {"relu2_1": 1.0}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double().cpu() - b.double().cpu()).norm() / (b.double().cpu().norm() + 1e-12))


def _image(seed: int, h: int = 48, w: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((1, 3, h, w), generator=g)


@pytest.fixture(scope="module")
def encoders():
    weights = resolve_weights("untrained")
    layers = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1"]
    return VGGEncoder(layers, weights), VGGEncoder(layers, weights).cuda()


def test_features_match_cpu(encoders):
    cpu, gpu = encoders
    image = _image(0)
    on_cpu, on_gpu = cpu(image), gpu(image.cuda())
    for layer in cpu.layers:
        assert on_gpu[layer].device.type == "cuda"
        assert _relative(on_gpu[layer], on_cpu[layer]) < 1e-2, layer


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_features_are_float32_and_close(precision):
    weights = resolve_weights("untrained")
    fp32 = VGGEncoder(["relu1_1", "relu5_1"], weights).cuda()
    low = VGGEncoder(["relu1_1", "relu5_1"], weights, precision=precision).cuda()
    image = _image(1).cuda()
    a, b = fp32(image), low(image)
    for layer in ("relu1_1", "relu5_1"):
        assert b[layer].dtype == torch.float32
        assert torch.isfinite(b[layer]).all()
        assert _relative(b[layer], a[layer]) < 5e-2, layer


def test_losses_match_cpu():
    g = torch.Generator().manual_seed(2)
    feats, target = torch.rand((1, 64, 24, 32), generator=g), torch.rand((1, 64, 24, 32), generator=g)
    image, warped = _image(3), _image(4)
    mask = (torch.rand((1, 1, 48, 64), generator=g) > 0.3).float()
    target_gram = losses.gram(target)
    terms = {
        "gram": lambda d: losses.gram(feats.to(d)),
        "style": lambda d: losses.style_loss(feats.to(d), target_gram.to(d)),
        "content": lambda d: losses.content_loss(feats.to(d), target.to(d)),
        "temporal": lambda d: losses.temporal_loss(image.to(d), warped.to(d), mask.to(d)),
        "tv": lambda d: losses.total_variation(image.to(d)),
        "range": lambda d: losses.range_penalty((image * 1.4 - 0.2).to(d)),
    }
    for name, term in terms.items():
        assert _relative(term("cuda"), term("cpu")) < 1e-5, name


def test_warp_and_warm_start_match_cpu():
    image = _image(5)
    h, w = image.shape[-2:]
    flow = np.zeros((h, w, 2), np.float32)
    flow[..., 0] = 3.5  # a pan: the right edge leaves the frame
    flow[..., 1] = np.linspace(-2, 2, h, dtype=np.float32)[:, None]
    for mode in ("bilinear", "bicubic"):
        assert _relative(warp(image.cuda(), flow, mode=mode), warp(image, flow, mode=mode)) < 1e-5, mode
    warped_cpu, warped_gpu = warp_previous(image, flow), warp_previous(image.cuda(), flow)
    assert warped_gpu.device.type == "cuda"
    reliable = np.ones((h, w), np.float32)
    mask = warm_start_mask("prev-warped-inside", flow, reliable)
    content = _image(6)
    init_cpu = initial_image("prev-warped-inside", content=content, previous=image, warped_previous=warped_cpu,
                             mask=mask_tensor(mask, "cpu"))
    init_gpu = initial_image("prev-warped-inside", content=content.cuda(), previous=image.cuda(),
                             warped_previous=warped_gpu, mask=mask_tensor(mask, "cuda"))
    assert init_gpu.device.type == "cuda"
    assert _relative(init_gpu, init_cpu) < 1e-5


def test_optimised_frame_matches_cpu(encoders):
    cpu, gpu = encoders
    content, style, warped = _image(7), _image(8, 40, 40), _image(9)
    mask = torch.ones((1, 1, 48, 64))
    weights = LossWeights(1.0, 20.0, 0.0, CONTENT, STYLE, range=100.0)
    results = []
    for enc, device in ((cpu, "cpu"), (gpu, "cuda")):
        targets = compute_style_targets(enc, [style.to(device)], [1.0], list(STYLE))
        objective = FrameObjective(enc, content.to(device), targets, weights,
                                   [TemporalTerm(warped.to(device), mask.to(device), 50.0)])
        results.append(stylize_frame(objective, content.to(device), iterations=10))
    on_cpu, on_gpu = results
    assert on_gpu.image.device.type == "cuda"
    diff = (on_gpu.image.cpu() - on_cpu.image).abs()
    assert float(diff.mean()) < 5e-3 and float(diff.max()) < 0.1
    assert on_gpu.losses["total"] == pytest.approx(on_cpu.losses["total"], rel=0.05)


def test_tiny_run_gives_the_cpu_frames(tmp_path):
    from videostyle.cli.main import main
    clip = make_clip(tmp_path / "clip.mp4", n_frames=4)
    style = tmp_path / "style.png"
    yy, xx = np.mgrid[0:48, 0:48]
    Image.fromarray(np.stack([np.where((xx + yy) // 4 % 2, 230, 30), xx * 5, yy * 5], -1).astype(np.uint8)).save(style)
    frames = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.mp4"
        assert main(["stylize", str(clip), "--style", str(style), "-o", str(out), "--weights", "untrained",
                     "--size", "48", "--iters", "6,3", "--device", device, "--keep-workdir", "-q"]) == 0
        frames[device] = _journaled_frames(tmp_path / f"{device}.mp4.videostyle-work")
    assert len(frames["cuda"]) == len(frames["cpu"]) == 4
    for a, b in zip(frames["cpu"], frames["cuda"]):
        diff = np.abs(a.astype(int) - b.astype(int))
        assert diff.mean() < 2.0 and diff.max() < 64


def _journaled_frames(workdir) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted((workdir / "frames").glob("*.png"))]
