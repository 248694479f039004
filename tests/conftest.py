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
