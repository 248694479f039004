"""videostyle.model.lbfgs.LBFGS is torch.optim.LBFGS (max_iter=1, no line search) step for step, bit for
bit on the CPU, while reading one number back from the device per step instead of ~100."""

from __future__ import annotations

import pytest
import torch

from videostyle.model import losses
from videostyle.model.lbfgs import LBFGS
from videostyle.model.optimise import FrameObjective, LossWeights, compute_style_targets, stylize_frame


def _run(objective, start: torch.Tensor, *, ours: bool, iterations: int, history: int) -> list[torch.Tensor]:
    x = start.clone().requires_grad_(True)
    if ours:
        opt = LBFGS(x, history_size=history)
    else:
        opt = torch.optim.LBFGS([x], lr=1.0, max_iter=1, history_size=history, tolerance_grad=0.0,
                                tolerance_change=0.0)

    def closure():
        x.grad = None
        loss = objective(x)
        loss.backward()
        return loss.detach()

    path = []
    for _ in range(iterations):
        opt.step(closure)
        path.append(x.detach().clone())
    return path


def _tiny_style_objective():
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.3)
        conv.bias.zero_()
    conv.requires_grad_(False)
    target = losses.gram(torch.relu(conv(torch.rand((1, 3, 16, 16), generator=g))))
    content = torch.rand((1, 3, 12, 20), generator=g)

    def objective(x):
        feats = torch.relu(conv(x))
        return losses.style_loss(feats, target) + 0.1 * (x - content).pow(2).mean()

    return objective, content


@pytest.mark.slow
@pytest.mark.parametrize("history", [3, 50])
def test_same_steps_as_torch_lbfgs(history):
    objective, start = _tiny_style_objective()
    theirs = _run(objective, start, ours=False, iterations=30, history=history)
    ours = _run(objective, start, ours=True, iterations=30, history=history)
    for k, (a, b) in enumerate(zip(theirs, ours)):
        assert torch.equal(a, b), f"iteration {k + 1}: max diff {float((a - b).abs().max())}"
    assert not torch.equal(theirs[0], theirs[-1])  # it did move


def test_pairs_without_curvature_are_dropped_as_torch_does():
    """A linear objective: every y.s is 0, so no pair is ever kept and each step is -g."""
    c = torch.linspace(-1, 1, 24).reshape(1, 2, 3, 4)
    start = torch.zeros_like(c)
    objective = lambda x: (c * x).sum()  # noqa: E731
    theirs = _run(objective, start, ours=False, iterations=5, history=5)
    ours = _run(objective, start, ours=True, iterations=5, history=5)
    for a, b in zip(theirs, ours):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_a_frame_reads_back_about_one_number_per_iteration(monkeypatch):
    """Host reads (bool/float/item/tolist of a tensor) during a 20-iteration frame: one curvature
    test per step and the loss history every 10 iterations, not one per history pair."""
    from videostyle.model.features import VGGEncoder, resolve_weights
    encoder = VGGEncoder(["relu1_1", "relu2_1"], resolve_weights("untrained"))
    content = torch.rand((1, 3, 24, 32), generator=torch.Generator().manual_seed(1))
    targets = compute_style_targets(encoder, [torch.rand((1, 3, 24, 24))], [1.0], ["relu1_1"])
    objective = FrameObjective(encoder, content, targets,
                               LossWeights(1.0, 20.0, 0.0, {"relu2_1": 1.0}, {"relu1_1": 1.0}, range=100.0))
    reads = {"n": 0}
    for name in ("__bool__", "__float__", "item", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            reads["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    result = stylize_frame(objective, content, iterations=20, evaluate_result=False)
    monkeypatch.undo()
    assert result.iterations == 20 and len(result.history) == 20
    # 19 curvature tests + 2 history read-backs + the final losses (a handful of parts).
    assert reads["n"] <= 19 + 2 + 8, reads["n"]
