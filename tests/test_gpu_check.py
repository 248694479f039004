"""scripts/gpu_check.py --smoke works end to end on the CPU, and the pieces it reads are right:
the busy time per phase of a run, and the memory model's arithmetic against the real network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from common import make_clip
from PIL import Image

from videostyle.model import memory
from videostyle.cli.main import main
from videostyle.model.features import VGGEncoder, resolve_weights
from videostyle.timing import PHASE_NAMES, PHASES

pytestmark = pytest.mark.slow  # minutes: the CI run has it, `-m "not slow"` skips it

ROOT = Path(__file__).resolve().parent.parent


def test_a_run_times_every_phase(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", n_frames=5)
    style = tmp_path / "style.png"
    Image.fromarray((np.indices((32, 32)).sum(0) % 7 * 36).astype(np.uint8)).convert("RGB").save(style)
    assert main(["stylize", str(clip), "--style", str(style), "-o", str(tmp_path / "out.mp4"),
                 "--weights", "untrained", "--size", "32", "--iters", "3,2", "-q"]) == 0
    times = PHASES.snapshot()
    assert set(PHASE_NAMES) <= set(times)
    assert times["optimise"][1] == 5 and times["write"][1] == 5
    assert times["decode"][1] == 5 and times["flow"][1] == 4  # no flow into the first frame
    assert all(seconds > 0 for seconds, _ in times.values())


def test_memory_model_counts_the_networks_activations():
    encoder = VGGEncoder(["relu3_1"], resolve_weights("untrained"))
    stack = [name for name, _ in encoder.stack.named_children()]
    kept = 3 * 40 * 56  # the normalised input
    x = torch.rand(1, 3, 40, 56)
    x = (x - encoder.mean) / encoder.std
    for name, module in encoder.stack.named_children():
        x = module(x)
        if name.startswith(("relu", "pool")):
            kept += x.numel()
    assert memory.vgg_activation_bytes(40, 56, stack) == kept * 4


def test_memory_model_terms_scale_with_pixels():
    stack = [name for name, _ in VGGEncoder(["relu5_1"], resolve_weights("untrained")).stack.named_children()]
    small = memory.estimate_peak_bytes(720, 1280, stack, history_size=50)
    large = memory.estimate_peak_bytes(1440, 2560, stack, history_size=50)
    assert large["total"] / small["total"] == pytest.approx(4.0, rel=0.01)
    assert small["lbfgs"] == 104 * 3 * 720 * 1280 * 4
    half = memory.estimate_peak_bytes(720, 1280, stack, precision="bf16", read_layers=["relu5_1"])
    assert half["vgg_activations"] < 0.6 * small["vgg_activations"]


def test_gpu_check_smoke_writes_every_section(tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--smoke", "--out", str(out),
                           "--sections", "env,speed,quality,memory,tiled,e2e,levers"],
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    for section in ("env", "speed", "quality", "memory", "tiled", "e2e", "levers"):
        assert report["sections"].get(section), section
        assert not any("section failed" in note for note in report["notes"].get(section, [])), \
            report["notes"][section]
    speed = report["sections"]["speed"]
    assert {row["precision"] for row in speed} == {"fp32", "bf16", "fp16"}
    assert all(row["iteration_ms"] > 0 and row["ratio"] > 0 for row in speed)
    tiled = report["sections"]["tiled"][0]
    assert (tiled["tile"], tiled["grid"], tiled["lbfgs_pairs"]) == (96, "2x3", 50)
    assert tiled["tiled_ms"] > 0 and tiled["untiled_ms"] > 0 and tiled["tiled_over_untiled"] > 0
    assert tiled["bands_ms"] > 0 and tiled["bands_over_untiled"] > 0
    e2e = report["sections"]["e2e"][0]
    assert e2e["frames"] == 4 and e2e["optimise_share"] > 0
    assert (out / "gpu_check.md").read_text().startswith("# videostyle GPU check (smoke, CPU)")
    assert (out / "quality_bf16.png").is_file()
