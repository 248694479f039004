"""--model vgg19|vgg16 and --weights through the CLI: one line and exit 2 for every bad file or layer,
nothing from a weights file ever executed, the model part of what a resume must match."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from common import make_clip
from PIL import Image

from videostyle.model import features
from videostyle.cli.main import main

FAST = ["--size", "32", "--iters", "2", "--content-layers", "relu2_1", "--style-layers", "relu1_1,relu2_1", "-q"]


@pytest.fixture
def style(tmp_path):
    path = tmp_path / "style.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(path)
    return path


class _Planted:
    """Unpickling this runs ``open(marker, "w")``, as a planted weights file's code would."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("videostyle: error: "), err
    return err


@pytest.mark.parametrize("spec", ["auto", "imagenet"])
def test_planted_pickle_in_the_hub_cache_never_runs(tmp_path, style, photo, capsys, spec):
    marker = tmp_path / "marker"
    cache_file = features.imagenet_cache_path()
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"features.0.weight": _Planted(marker)}, cache_file)
    assert main(["image", str(photo), "--style", str(style), "-o", str(tmp_path / "out.png"),
                 "--weights", spec, *FAST]) == 2
    err = _one_line_error(capsys)
    assert str(cache_file) in err and "expected dcbb9e9d" in err
    assert not marker.exists() and not (tmp_path / "out.png").exists()


def test_planted_pickle_as_weights_path_never_runs(tmp_path, style, photo, capsys):
    marker = tmp_path / "marker"
    evil = tmp_path / "weights.pth"
    torch.save({"features.0.weight": _Planted(marker)}, evil)
    assert main(["image", str(photo), "--style", str(style), "-o", str(tmp_path / "out.png"),
                 "--weights", str(evil), *FAST]) == 2
    err = _one_line_error(capsys)
    assert str(evil) in err and "weights_only=True refused" in err
    assert not marker.exists()


def _untrained_state(model: str) -> dict:
    enc = features.VGGEncoder(["relu2_1"], features.resolve_weights("untrained", model))
    return {f"features.{i}.{p}": getattr(m, p).detach() * 0.9
            for i, (_, m) in enumerate(enc.stack.named_children())
            if isinstance(m, torch.nn.Conv2d) for p in ("weight", "bias")}


def test_model_mismatch_and_missing_layer_are_one_line(tmp_path, style, photo, capsys):
    v19 = _untrained_state("vgg19")
    v19["features.16.weight"] = torch.zeros(256, 256, 3, 3)  # conv3_4: VGG-19 only
    torch.save(v19, tmp_path / "v19.pth")
    out = str(tmp_path / "out.png")
    assert main(["image", str(photo), "--style", str(style), "-o", out, "--model", "vgg16",
                 "--weights", str(tmp_path / "v19.pth"), *FAST]) == 2
    err = _one_line_error(capsys)
    assert "is a VGG-19 state dict" in err and "--model is vgg16 (VGG-16)" in err
    assert main(["image", str(photo), "--style", str(style), "-o", out, "--model", "vgg16", "--weights",
                 "untrained", *FAST[:-2], "relu1_1,relu3_4", "-q"]) == 2
    assert "VGG-16 (--model vgg16) has no layer relu3_4" in _one_line_error(capsys)


def test_vgg16_runs_and_its_model_is_in_the_manifest_and_the_resume_check(tmp_path, style, capsys):
    src = make_clip(tmp_path / "clip.mp4", n_frames=3)
    out, work = tmp_path / "out.mp4", tmp_path / "work"
    args = ["stylize", str(src), "--style", str(style), "-o", str(out), "--workdir", str(work),
            "--keep-workdir", "--weights", "untrained", *FAST]
    assert main([*args, "--model", "vgg16"]) == 0
    manifest = json.loads((work / "manifest.json").read_text())
    assert manifest["config"]["model"] == "vgg16" and manifest["weights_id"] == "vgg16-untrained-seed0"
    out.unlink()
    assert main([*args, "--model", "vgg19"]) == 2
    assert "model vgg16 -> vgg19" in _one_line_error(capsys)
