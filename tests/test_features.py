import hashlib
import warnings

import pytest
import torch

from videostyle.model import features
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


def _torchvision_style_state_dict(model="vgg19"):
    """A state dict with torchvision's VGG key names, as the ImageNet file has."""
    deepest = "relu5_4" if model == "vgg19" else "relu5_3"
    enc = features.VGGEncoder([deepest], features.resolve_weights("untrained", model))
    state = {}
    for position, (name, module) in enumerate(enc.stack.named_children()):
        if isinstance(module, torch.nn.Conv2d):
            state[f"features.{position}.weight"] = module.weight.detach() * 0.5 + 0.01
            state[f"features.{position}.bias"] = module.bias.detach() + 0.02
    return state


def _plant_as_hub_file(monkeypatch, state_or_path, model="vgg19"):
    """Write ``state`` (or copy a file) as the hub cache file of ``model``, under a URL whose name carries
    that file's own sha256 prefix (as torchvision's names do), so the hash check accepts it."""
    tmp = features.imagenet_cache_path(model).with_name("planted.tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(state_or_path, dict):
        torch.save(state_or_path, tmp)
    else:
        tmp.write_bytes(state_or_path.read_bytes())
    prefix = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    monkeypatch.setattr(features, "_imagenet_url", lambda m: f"https://example.invalid/{m}-{prefix}.pth")
    cache_file = features.imagenet_cache_path(model)
    tmp.rename(cache_file)
    return cache_file


@pytest.mark.slow
def test_imagenet_weights_load_from_the_torch_hub_cache_path(monkeypatch):
    # The cache file is read by us (weights_only=True) after its sha256 prefix is checked; no download.
    state = _torchvision_style_state_dict()
    _plant_as_hub_file(monkeypatch, state)
    resolved = features.resolve_weights("imagenet")
    assert resolved.is_imagenet and resolved.weights_id == "imagenet1k_v1" and resolved.label == "ImageNet VGG-19"
    enc = features.VGGEncoder(["relu2_1"], resolved)
    assert torch.equal(enc.stack.conv2_1.weight, state["features.5.weight"])
    assert torch.equal(enc.stack.conv1_1.bias, state["features.0.bias"])


def test_a_hub_cache_file_with_the_wrong_hash_prefix_is_refused_even_for_auto(tmp_path):
    cache_file = features.imagenet_cache_path()  # the real name: vgg19-dcbb9e9d.pth
    assert cache_file.name == "vgg19-dcbb9e9d.pth"
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_torchvision_style_state_dict(), cache_file)  # a valid state dict, but not the published one
    for spec in ("imagenet", "auto"):
        with pytest.raises(WeightsError, match=r"^weights file '.*vgg19-dcbb9e9d\.pth' is damaged or not the "
                                               r"published file: its sha256 starts [0-9a-f]{8}, expected "
                                               r"dcbb9e9d \(the prefix in its name\)"):
            features.resolve_weights(spec)


class _Planted:
    """Unpickling this runs ``open(marker, "w")``: what a planted weights file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_pickle_never_runs_even_with_a_matching_hash(monkeypatch, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"features.0.weight": _Planted(marker)}, evil)
    cache_file = _plant_as_hub_file(monkeypatch, evil)
    for spec in ("auto", "imagenet", str(cache_file)):
        with pytest.raises(WeightsError, match=r"^cannot read weights file '.*' as a plain state dict "
                                               r"\(weights_only=True refused"):
            features.resolve_weights(spec)
    assert not marker.exists()


def test_vgg16_imagenet_loads_like_vgg19_with_its_own_file_and_id(monkeypatch):
    assert features.imagenet_cache_path("vgg16").name == "vgg16-397923af.pth"
    state = _torchvision_style_state_dict("vgg16")
    _plant_as_hub_file(monkeypatch, state, "vgg16")
    resolved = features.resolve_weights("imagenet", "vgg16")
    assert (resolved.model, resolved.weights_id, resolved.label) == ("vgg16", "vgg16-imagenet1k_v1", "ImageNet VGG-16")
    enc = features.VGGEncoder(["relu5_3"], resolved)
    assert torch.equal(enc.stack.conv5_3.weight, state["features.28.weight"])
    assert torch.equal(enc.stack.conv4_1.weight, state["features.17.weight"])


def test_vgg16_layers_and_the_ones_it_lacks():
    names = features.layer_names("vgg16")
    assert len(names) == 31 and names.index("relu4_2") == 20 and "relu3_4" not in names
    enc = features.VGGEncoder(["relu4_2"], features.resolve_weights("untrained", "vgg16"))
    assert enc(torch.rand(1, 3, 32, 32))["relu4_2"].shape == (1, 512, 4, 4)
    with pytest.raises(ValueError, match=r"^VGG-16 \(--model vgg16\) has no layer relu3_4; expected one of "
                                         r"relu1_1, .*relu5_3$"):
        features.VGGEncoder(["relu3_4"], features.resolve_weights("untrained", "vgg16"))


def test_a_weights_file_of_the_other_model_names_both(tmp_path):
    torch.save(_torchvision_style_state_dict("vgg16"), tmp_path / "v16.pth")
    torch.save(_torchvision_style_state_dict("vgg19"), tmp_path / "v19.pth")
    with pytest.raises(WeightsError, match=r"^weights file '.*v16\.pth' is a VGG-16 state dict \(it has "
                                           r"features\.17, .*\), but --model is vgg19 \(VGG-19\); pass --model vgg16$"):
        features.resolve_weights(str(tmp_path / "v16.pth"), "vgg19")
    with pytest.raises(WeightsError, match=r"is a VGG-19 state dict .* but --model is vgg16 \(VGG-16\); "
                                           r"pass --model vgg19$"):
        features.resolve_weights(str(tmp_path / "v19.pth"), "vgg16")
    resolved = features.resolve_weights(str(tmp_path / "v16.pth"), "vgg16")
    assert resolved.weights_id.startswith("vgg16-file:") and resolved.label.startswith("VGG-16 from")


def test_hed_alias_needs_vgg16_and_names_the_script_when_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("VIDEOSTYLE_WEIGHTS_DIR", str(tmp_path / "w"))
    assert features.trained_weights_path() == tmp_path / "w" / "vgg16-hed-bsds500.pth"
    with pytest.raises(WeightsError, match=r"needs --model vgg16, got --model vgg19"):
        features.resolve_weights("hed")
    with pytest.raises(WeightsError, match=r"not found at .*vgg16-hed-bsds500\.pth.*scripts/trained_weights\.py"):
        features.resolve_weights("hed", "vgg16")
    features.trained_weights_path().parent.mkdir(parents=True)
    torch.save(_torchvision_style_state_dict("vgg16"), features.trained_weights_path())
    for spec in ("hed", str(features.trained_weights_path())):
        resolved = features.resolve_weights(spec, "vgg16")
        assert resolved.weights_id == "vgg16-hed-bsds500"
        assert resolved.label == "VGG-16 (HED fine-tune of ImageNet VGG-16)" and not resolved.is_imagenet


def test_imagenet_unavailable_is_a_clear_error_and_auto_falls_back_with_warning(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network unreachable")
    monkeypatch.setattr(features, "_download", no_network)
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
    with pytest.raises(WeightsError, match=r"^--weights must be auto, imagenet, untrained, hed or a state dict "
                                           r"file; got 'nope\.pth' \(no such file\)$"):
        features.resolve_weights("nope.pth")
    torch.save({"features.0.weight": torch.zeros(2, 3, 3, 3)}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=r"have shape \(2, 3, 3, 3\), expected \(64, 3, 3, 3\)"):
        features.VGGEncoder(["relu1_1"], features.resolve_weights(str(tmp_path / "bad.pth")))
