"""The frame objective's value and gradient evaluated block by block of VGG, each block in bands of rows,
exactly, in bounded memory (issue 17).

VGG is cut after each pooling into its blocks (:func:`~videostyle.model.tiling.vgg_blocks`). The forward
pass runs one block at a time over the whole frame, band by band (:func:`~videostyle.model.tiling.plan_bands`:
each band with one row of context per 3x3 convolution, so its own rows are exact), keeps each block's
output (pool1 is a sixteenth of the frame's first-block activations, and every later one half the one
before), and sums the Gram matrices of the layers it reads (:mod:`videostyle.model.regions`). The
backward pass runs the blocks in reverse, each band recomputed with its graph and given the gradient of
its output rows and its own layers' surrogate terms; the bands' input gradients, summed, are the
block's. The frame's own terms and the gradient are exact to float rounding.

Against tiles (:mod:`videostyle.model.tiled`) nothing is computed twice for overlap but the bands' few
rows of context, and the peak holds the block outputs and two gradients instead of a crop's
activations; the cost is one more forward pass per iteration (the bands' recomputation).
"""

from __future__ import annotations

import torch
from torch import nn

from videostyle.model import memory
from videostyle.model.features import VGGEncoder, run_layers
from videostyle.model.regions import RegionObjective
from videostyle.model.tiling import (FEATURE_PASS_TILE, TILE_HALO, Band, assemble_features, band_rows, plan_bands,
                                     plan_tiles, vgg_blocks)


def uses_bands(precision: str, device_type: str) -> bool:
    """Whether a memory plan runs VGG in bands (this module) rather than tiles: on the CPU in fp32, where
    it was measured (docs/BENCHMARKS.md, "Bands"). A GPU keeps the tiles its 16 GiB plan was measured
    with, and autocast's casts are not cut into blocks."""
    return device_type == "cpu" and precision == "fp32"


class _Block:
    """One VGG block: its ``(name, module)`` pairs, the layers the losses read in it, its 3x3
    convolutions and their output channels, whether it ends in a pooling, and whether it is the first
    (which normalises the image it is given)."""

    def __init__(self, modules: list[tuple[str, nn.Module]], read: set[str], first: bool):
        self.modules = modules
        self.read = [name for name, _ in modules if name in read]
        convs = [m for name, m in modules if name.startswith("conv")]
        self.convs = len(convs)
        self.channels = convs[-1].out_channels if convs else 0
        self.pooled = modules[-1][0].startswith("pool")
        self.first = first


class BandedObjective(RegionObjective):
    """The value and gradient of :class:`~videostyle.model.optimise.FrameObjective`'s objective, VGG run
    block by block in bands (see the module docstring); same constructor arguments, plus
    ``band_bytes`` (:func:`~videostyle.model.tiling.band_rows`).

    :meth:`loss_and_gradient` sets ``image.grad``.
    """

    def __init__(self, encoder: VGGEncoder, content: torch.Tensor, targets, weights, temporal=(), fresh=None, *,
                 band_bytes: int | None = None):
        height, width = content.shape[-2:]
        content_targets = assemble_features(encoder, content, list(weights.content_layers),
                                            plan_tiles(height, width, tile=FEATURE_PASS_TILE, halo=TILE_HALO))
        super().__init__(encoder, content_targets, targets, weights, content.shape, temporal, fresh)
        children = dict(encoder.stack.named_children())
        names = vgg_blocks(list(children))
        self.blocks = [_Block([(name, children[name]) for name in block], set(encoder.layers), first=i == 0)
                       for i, block in enumerate(names)]
        self.band_kw = {} if band_bytes is None else {"band_bytes": band_bytes}

    def _bands(self, block: _Block, x: torch.Tensor) -> list[Band]:
        """The bands of ``block`` over its input ``x`` ``(1, C, h, w)``."""
        rows = band_rows(max(block.channels, 1), x.shape[-1], block.convs, **self.band_kw)
        return plan_bands(x.shape[-2], rows, block.convs)

    @staticmethod
    def _start_block(x: torch.Tensor) -> None:
        """Before each block (either pass) the C library's heap gives back what the last block's bands
        freed: each block's bands have maps of other sizes, and kept, those pieces added 200 MiB to a
        1080x1920 frame's peak on the CPU (docs/BENCHMARKS.md, "Bands")."""
        if x.device.type == "cpu":
            memory.release_free_memory()

    def _run(self, block: _Block, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The block on input rows ``x``: its output and its read layers' maps."""
        return run_layers(block.modules, self.encoder.normalise(x) if block.first else x, block.read)

    @staticmethod
    def _own(layer: str, f: torch.Tensor, band: Band) -> tuple[torch.Tensor, slice, slice]:
        """The band's own rows of ``f`` (a map of the block ``band`` ran on: a pooling's at half the rows),
        and the rows and columns they are of the whole frame's map."""
        if layer.startswith("pool"):
            lo, hi, a = band.lo // 2, band.hi // 2, band.a // 2
        else:
            lo, hi, a = band.lo, band.hi, band.a
        return f[..., lo - a:hi - a, :], slice(lo, hi), slice(0, f.shape[-1])

    def _evaluate(self, image: torch.Tensor, *, gradient: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        variable, image = image, image.detach()
        grad, pixel = self.pixel_terms(image, gradient=gradient)
        sums: dict[str, torch.Tensor] = {}
        new_sums: dict[str, torch.Tensor] = {}
        inputs, content_total = self._forward(image, sums, new_sums, content=not gradient)
        gram_parts, style_matrices, new_matrices = self.gram_terms(sums, new_sums)
        if gradient:
            image_grad, content_total = self._backward(inputs, style_matrices, new_matrices)
            variable.grad = grad + image_grad
        parts = {"content": content_total, **gram_parts, **pixel}
        return sum(parts.values()), parts

    def _forward(self, image: torch.Tensor, sums: dict[str, torch.Tensor], new_sums: dict[str, torch.Tensor], *,
                 content: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The no-grad pass: adds the read layers' Gram matrices to ``sums`` and ``new_sums``
        (:meth:`add_grams`). Returns each block's input (``image``, pool1, ...; the last block's output is
        not kept) and, with ``content``, the content terms (else 0)."""
        content_total = torch.zeros((), device=image.device)
        inputs = [image]
        with torch.no_grad():
            for i, block in enumerate(self.blocks):
                x, last = inputs[-1], i == len(self.blocks) - 1
                self._start_block(x)
                out = None
                for band in self._bands(block, x):
                    y, feats = self._run(block, x[..., band.a:band.b, :])
                    for layer, f in feats.items():
                        part, rows, cols = self._own(layer, f, band)
                        self.add_grams(sums, new_sums, layer, part, rows, cols)
                        if content:
                            content_total = content_total + self.content_term(layer, part, rows, cols)
                    if not last:
                        own, rows, _ = self._own(block.modules[-1][0], y, band)
                        if out is None:
                            out_rows = x.shape[-2] // 2 if block.pooled else x.shape[-2]
                            out = y.new_empty((*y.shape[:-2], out_rows, y.shape[-1]))
                        out[..., rows, :] = own
                    del y, feats
                if not last:
                    inputs.append(out)
        return inputs, content_total

    def _backward(self, inputs: list[torch.Tensor], style_matrices: dict[str, torch.Tensor],
                  new_matrices: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The blocks in reverse, each band recomputed with its graph and back-propagated from its output
        rows' gradient and its read layers' terms (:meth:`region_terms`). Empties ``inputs`` (each block's
        input freed once its gradient is made). Returns the image's gradient ``(1, 3, H, W)`` and the
        content terms (detached)."""
        content_total = torch.zeros((), device=inputs[0].device)
        out_grad = None  # the gradient of the loss at the block's output
        for block in reversed(self.blocks):
            x = inputs.pop()
            self._start_block(x)
            in_grad = torch.zeros_like(x)
            for band in self._bands(block, x):
                leaf = x[..., band.a:band.b, :].detach().requires_grad_(True)
                with torch.enable_grad():
                    y, feats = self._run(block, leaf)
                    roots, root_grads = [], []
                    for layer, f in feats.items():
                        surrogate, content = self.region_terms(layer, *self._own(layer, f, band),
                                                               style_matrices, new_matrices)
                        content_total = content_total + content.detach()
                        roots.append(surrogate + content)
                        root_grads.append(None)
                    if out_grad is not None:
                        own, rows, _ = self._own(block.modules[-1][0], y, band)
                        roots.append(own)
                        root_grads.append(out_grad[..., rows, :])
                    torch.autograd.backward(roots, root_grads)
                in_grad[..., band.a:band.b, :] += leaf.grad
                del leaf, y, feats, roots, root_grads
            del x
            out_grad = in_grad
        return out_grad, content_total
