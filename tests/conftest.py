import os

import pytest
import torch

# Two cores here and in CI: keep torch from oversubscribing when pytest runs.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _no_weight_downloads(monkeypatch, tmp_path_factory):
    """Point the torch hub cache at an empty dir: tests never read or download real weights."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
    torch.hub.set_dir(os.environ["TORCH_HOME"] + "/hub")
    yield


@pytest.fixture(autouse=True)
def _trained_weights_or_skip(request):
    """Tests marked ``trained`` need the cache of scripts/trained_weights.py (outside TORCH_HOME): they skip
    without it, or fail where ``VIDEOSTYLE_REQUIRE_TRAINED=1`` (CI, whose .ci/run makes the cache)."""
    if request.node.get_closest_marker("trained") is None:
        return
    from videostyle.model.features import trained_weights_path

    path = trained_weights_path()
    if not path.is_file():
        reason = (f"no trained VGG-16 (HED fine-tune of ImageNet VGG-16) weights at {path}: "
                  f"run python scripts/trained_weights.py")
        if os.environ.get("VIDEOSTYLE_REQUIRE_TRAINED") == "1":
            pytest.fail(reason + " (VIDEOSTYLE_REQUIRE_TRAINED=1)")
        pytest.skip(reason)
