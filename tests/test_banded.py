"""VGG block by block in bands of rows (videostyle.model.banded) gives the untiled objective's value and
gradient, and the memory plan uses it on the CPU."""

from __future__ import annotations

import pytest
import torch

from videostyle.model import memory
from videostyle.model.banded import BandedObjective, uses_bands
from videostyle.model.features import VGGEncoder, resolve_weights
from videostyle.model.objective import new_content_shares
from videostyle.model.optimise import FrameObjective, LossWeights, TemporalTerm, compute_style_targets, stylize_frame
from videostyle.model.tiling import band_context, band_rows, plan_bands, vgg_blocks

STYLE = {"relu1_1": 0.2, "relu1_2": 0.1, "relu2_1": 0.2, "relu3_1": 0.2, "relu4_1": 0.2, "relu5_1": 0.2}
CONTENT = {"relu1_1": 0.5, "pool2": 0.5, "relu4_2": 1.0}


@pytest.fixture(scope="module")
def setup():
    """A 137x184 frame (an odd height: the last pooling drops a row), relu1_1 as a style, content and
    new-content layer, a pooling read as a content layer, new content on the right, a temporal term."""
    encoder = VGGEncoder([*CONTENT, *STYLE], resolve_weights("untrained"))
    g = torch.Generator().manual_seed(0)
    content = torch.nn.functional.interpolate(torch.rand((1, 3, 17, 23), generator=g), size=(137, 184),
                                              mode="bicubic").clamp(0, 1)
    targets = compute_style_targets(encoder, [torch.rand((1, 3, 96, 96), generator=g)], [1.0], list(STYLE))
    weights = LossWeights(1.0, 20.0, 0.01, CONTENT, STYLE, range=100.0, new_content=5.0)
    temporal = [TemporalTerm(torch.rand((1, 3, 137, 184), generator=g), torch.ones((1, 1, 137, 184)), 50.0)]
    fresh = torch.zeros((1, 1, 137, 184))
    fresh[..., 120:] = 1
    assert {"relu1_1", "relu5_1"} <= set(new_content_shares(weights, fresh))
    image = (content + 0.2 * torch.randn(content.shape, generator=g)).clamp(-0.1, 1.1)
    return encoder, content, targets, weights, temporal, fresh, image


def _value_and_grad(objective, image):
    x = image.clone().requires_grad_(True)
    total, parts = objective.loss_and_gradient(x)
    return total, parts, x.grad


def test_vgg_is_cut_into_its_blocks():
    names = [n for n, _ in VGGEncoder(["relu4_2"], resolve_weights("untrained", "vgg16")).stack.named_children()]
    blocks = vgg_blocks(names)
    assert [b[-1] for b in blocks] == ["pool1", "pool2", "pool3", "relu4_2"]
    assert sum(blocks, []) == names


@pytest.mark.parametrize("height, rows, convs", [(137, 8, 2), (60, 16, 3), (7, 8, 4), (64, 64, 2)])
def test_bands_cover_the_rows_with_their_context(height, rows, convs):
    bands = plan_bands(height, rows, convs)
    assert [b.lo for b in bands] == list(range(0, height, rows)) and bands[-1].hi == height
    for band in bands:
        assert band.lo % 2 == 0 and band.a % 2 == 0  # the pooling windows are the whole map's
        assert band.a == 0 or band.lo - band.a >= convs
        assert band.b == height or band.b - band.hi >= convs
    # Rows from the bytes of a map with its context, under glibc's threshold as --max-memory sets it.
    assert band_rows(64, 1080, 2) == 52 and band_rows(64, 1080, 3) == 48 and band_rows(512, 4096, 3, 1 << 20) == 8
    for channels, width, convs in ((64, 1080, 2), (256, 270, 3), (512, 3840 // 16, 3)):
        assert channels * (band_rows(channels, width, convs) + band_context(convs)) * width * 4 < memory.MMAP_THRESHOLD


@pytest.mark.slow
@pytest.mark.parametrize("band_bytes", [1, 64 * 184 * 4 * 46, None])
def test_bands_give_the_untiled_value_and_gradient(setup, band_bytes):
    """Bands of 8 rows (the fewest: many bands in every block), of 42, and the default (one band per
    block at this size): the same value, parts and gradient as VGG on the whole frame."""
    encoder, content, targets, weights, temporal, fresh, image = setup
    total, parts, grad = _value_and_grad(FrameObjective(encoder, content, targets, weights, temporal, fresh), image)
    banded = BandedObjective(encoder, content, targets, weights, temporal, fresh, band_bytes=band_bytes)
    assert [b.pooled for b in banded.blocks] == [True] * 4 + [False]
    b_total, b_parts, b_grad = _value_and_grad(banded, image)
    assert float(b_total) == pytest.approx(float(total), rel=1e-6)
    assert b_parts.keys() == parts.keys()
    for name in parts:
        assert float(b_parts[name]) == pytest.approx(float(parts[name]), rel=1e-5), name
    assert float((b_grad - grad).norm() / grad.norm()) < 1e-5
    loss_only, only_parts = banded.loss(image)
    assert float(loss_only) == pytest.approx(float(total), rel=1e-6)
    assert float(only_parts["content"]) == pytest.approx(float(parts["content"]), rel=1e-5)


def test_a_band_without_its_context_is_not_exact(setup, monkeypatch):
    """The test above can fail: bands one row of context short below give another gradient."""
    from videostyle.model import banded as banded_module
    from videostyle.model.tiling import Band

    encoder, content, targets, weights, temporal, fresh, image = setup
    _, _, grad = _value_and_grad(FrameObjective(encoder, content, targets, weights, temporal, fresh), image)
    short = lambda height, rows, convs: [Band(b.lo, b.hi, b.a, max(b.hi, b.b - 1))  # noqa: E731
                                         for b in plan_bands(height, rows, convs)]
    monkeypatch.setattr(banded_module, "plan_bands", short)
    _, _, b_grad = _value_and_grad(BandedObjective(encoder, content, targets, weights, temporal, fresh,
                                                   band_bytes=1), image)
    assert float((b_grad - grad).norm() / grad.norm()) > 1e-3


@pytest.mark.slow
def test_a_banded_frame_matches_the_untiled_one(setup):
    encoder, content, targets, weights, temporal, _, _ = setup
    plain = stylize_frame(FrameObjective(encoder, content, targets, weights, temporal), content, iterations=8)
    banded = stylize_frame(BandedObjective(encoder, content, targets, weights, temporal,
                                           band_bytes=64 * 184 * 4 * 46), content, iterations=8)
    # The gradients agree to float rounding (2e-7 relative); L-BFGS without a line search amplifies it:
    # measured 0.0002 on average with these 42-row bands, 0.0032 with 8-row ones (more partial sums).
    diff = (banded.image - plain.image).abs()
    assert float(diff.mean()) < 3e-3 and float(diff.max()) < 0.1
    assert banded.losses["total"] == pytest.approx(plain.losses["total"], rel=1e-2)


def test_the_plan_uses_bands_on_the_cpu_in_fp32():
    names = [n for n, _ in VGGEncoder(["relu5_1"], resolve_weights("untrained", "vgg16")).stack.named_children()]
    assert uses_bands("fp32", "cpu") and not uses_bands("fp32", "cuda") and not uses_bands("bf16", "cpu")
    kw = dict(halo=96, read_layers=["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1"],
              history_size=50, overhead=1.15)
    # A 1080x1920 frame in the 1.8 GiB a 2.5 GB run leaves the photo: bands, with more L-BFGS pairs than
    # the tiles the same budget gets.
    budget = int(1.8 * 2**30)
    bands = memory.plan_memory(1920, 1080, names, budget_bytes=budget, bands=True, **kw)
    tiles = memory.plan_memory(1920, 1080, names, budget_bytes=budget, **kw)
    assert bands.tile == memory.BANDS and isinstance(tiles.tile, int)
    assert bands.history > tiles.history and bands.peak_bytes <= budget
    vgg = memory.banded_bytes(1920, 1080, names)
    assert bands.peak_bytes == (memory.frame_bytes(1920, 1080) + vgg
                                + memory.lbfgs_bytes(1920, 1080, history_size=bands.history))
    # VGG's share, fitted to the measured peak (docs/BENCHMARKS.md, "Bands"): 778 MiB at 1080p, 426 MiB
    # at 540p (the block outputs and gradients scale with the frame; a band's maps do not).
    assert abs(vgg / 2**20 - 778) < 5 and abs(memory.banded_bytes(960, 540, names) / 2**20 - 426) < 5
    # The whole frame still runs untiled when it fits.
    whole = memory.estimate_peak_bytes(1920, 1080, names, history_size=50)["total"]
    assert memory.plan_memory(1920, 1080, names, budget_bytes=int(whole * 1.15) + 1, bands=True, **kw).tile is None
    # Bands hold the block outputs of the whole frame: where not even 5 pairs fit with them, tiles, whose
    # crops shrink; and too little for any tile is one line.
    small = memory.plan_memory(1920, 1080, names, budget_bytes=bands.peak_bytes // 2, bands=True, **kw)
    assert isinstance(small.tile, int) and small.history == memory.MIN_HISTORY
    with pytest.raises(ValueError, match=r"^1080x1920 px needs at least \d+ MiB \(.* the smallest tile's "
                                         r"VGG \d+ MiB\), more than \d+ MiB$"):
        memory.plan_memory(1920, 1080, names, budget_bytes=256 << 20, bands=True, **kw)


def test_a_banded_plan_makes_a_banded_objective(monkeypatch):
    from videostyle.config import StyleConfig
    from videostyle.step import Stylizer

    stylizer = Stylizer.__new__(Stylizer)
    stylizer.cfg, stylizer.device, stylizer.precision = StyleConfig(styles=("s.png",)), torch.device("cpu"), "fp32"
    stylizer.on_step = None
    stylizer.encoder = VGGEncoder(["relu1_1", "relu2_1"], resolve_weights("untrained"))
    monkeypatch.setattr(memory, "resident_memory", lambda: 0)
    stylizer.plan_memory((1920, 1080), max_memory=3 << 30)
    assert stylizer.tile == memory.BANDS and stylizer.history < 50
    content = torch.rand((1, 3, 40, 48))
    targets = compute_style_targets(stylizer.encoder, [content], [1.0], ["relu1_1", "relu2_1"])
    weights = LossWeights(1.0, 1.0, 0.0, {"relu2_1": 1.0}, {"relu1_1": 0.5, "relu2_1": 0.5})
    assert isinstance(stylizer.make_objective(stylizer.encoder, content, targets, weights), BandedObjective)


def test_bands_with_autocast_are_refused_in_one_line():
    from videostyle.config import StyleConfig
    from videostyle.errors import InputError
    from videostyle.step import Stylizer

    stylizer = Stylizer.__new__(Stylizer)
    stylizer.cfg, stylizer.device, stylizer.precision = StyleConfig(styles=("s.png",)), torch.device("cpu"), "bf16"
    with pytest.raises(InputError, match=r"^--tile bands runs VGG in fp32, not --precision bf16: drop one of them, "
                                         r"or give --tile PX$"):
        stylizer.plan_memory((64, 48), tile=memory.BANDS)
