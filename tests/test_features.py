import warnings

import pytest
import torch

from videostyle import features
from videostyle.errors import WeightsError


def test_layer_names_follow_vgg19():
    names = features.LAYER_NAMES
    assert names[:5] == ("conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1")
    assert len(names) == 37  # 16 conv + 16 relu + 5 pool, as torchvision's vgg19().features
    assert names.index("relu4_2") == 22


def test_encoder_returns_named_layers_with_expected_shapes_and_truncates():
    enc = features.VGGEncoder(["relu1_1", "relu3_1"], features.resolve_weights("untrained"))
    out = enc(torch.rand(1, 3, 32, 40))
    assert set(out) == {"relu1_1", "relu3_1"}
    assert out["relu1_1"].shape == (1, 64, 32, 40)
    assert out["relu3_1"].shape == (1, 256, 8, 10)
    assert list(enc.stack.named_children())[-1][0] == "relu3_1"  # nothing deeper is computed


def test_untrained_weights_are_seeded_and_independent_of_truncation():
    w = features.resolve_weights("untrained")
    short = features.VGGEncoder(["relu1_1"], w)
    long = features.VGGEncoder(["relu5_1"], w)
    assert torch.equal(short.stack.conv1_1.weight, long.stack.conv1_1.weight)
    again = features.VGGEncoder(["relu1_1"], w)
    assert torch.equal(short.stack.conv1_1.weight, again.stack.conv1_1.weight)


def _torchvision_style_state_dict():
    """A state dict with torchvision's VGG-19 key names, as the ImageNet file has."""
    enc = features.VGGEncoder(["relu5_4"], features.resolve_weights("untrained"))
    state = {}
    for position, (name, module) in enumerate(enc.stack.named_children()):
        if isinstance(module, torch.nn.Conv2d):
            state[f"features.{position}.weight"] = module.weight.detach() * 0.5 + 0.01
            state[f"features.{position}.bias"] = module.bias.detach() + 0.02
    return state


def test_imagenet_weights_load_through_the_torch_hub_cache_path(tmp_path):
    # The real code path: torchvision's VGG19_Weights loader reads the hub cache file when present.
    state = _torchvision_style_state_dict()
    cache_file = features.imagenet_cache_path()
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, cache_file)
    resolved = features.resolve_weights("imagenet")
    assert resolved.is_imagenet and resolved.weights_id == "imagenet1k_v1"
    enc = features.VGGEncoder(["relu2_1"], resolved)
    assert torch.equal(enc.stack.conv2_1.weight, state["features.5.weight"])
    assert torch.equal(enc.stack.conv1_1.bias, state["features.0.bias"])


def test_imagenet_unavailable_is_a_clear_error_and_auto_falls_back_with_warning(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network unreachable")
    monkeypatch.setattr(features, "_load_imagenet_state_dict", no_network)
    with pytest.raises(WeightsError, match=r"^ImageNet VGG-19 weights unavailable \(network unreachable\); "
                                           r"download https://.*vgg19-dcbb9e9d\.pth to "):
        features.resolve_weights("imagenet")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resolved = features.resolve_weights("auto")
    assert not resolved.is_imagenet and resolved.weights_id.startswith("untrained")
    assert any("UNTRAINED" in str(w.message) and "vgg19-dcbb9e9d.pth" in str(w.message) for w in caught)


def test_weights_from_a_path_with_named_or_torchvision_keys(tmp_path):
    state = _torchvision_style_state_dict()
    path = tmp_path / "vgg.pth"
    torch.save(state, path)
    resolved = features.resolve_weights(str(path))
    assert resolved.weights_id.startswith("file:") and not resolved.is_imagenet
    enc = features.VGGEncoder(["relu1_1"], resolved)
    assert torch.equal(enc.stack.conv1_1.weight, state["features.0.weight"])

    named = {"conv1_1.weight": state["features.0.weight"], "conv1_1.bias": state["features.0.bias"]}
    torch.save(named, tmp_path / "named.pth")
    enc = features.VGGEncoder(["relu1_1"], features.resolve_weights(str(tmp_path / "named.pth")))
    assert torch.equal(enc.stack.conv1_1.weight, state["features.0.weight"])


def test_bad_weights_specs_are_one_line_errors(tmp_path):
    with pytest.raises(WeightsError, match=r"^--weights must be auto, imagenet, untrained or a state dict "
                                           r"file; got 'nope\.pth' \(no such file\)$"):
        features.resolve_weights("nope.pth")
    torch.save({"features.0.weight": torch.zeros(2, 3, 3, 3)}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=r"have shape \(2, 3, 3, 3\), expected \(64, 3, 3, 3\)"):
        features.VGGEncoder(["relu1_1"], features.resolve_weights(str(tmp_path / "bad.pth")))
