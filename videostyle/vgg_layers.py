"""VGG layer names (``relu4_2``, ``pool3``, ...) of the models the losses can use: the vocabulary that the
settings (:mod:`videostyle.config`) check and :mod:`videostyle.model.features` builds from. No torch here,
so a command line can be checked before torch is imported.
"""

from __future__ import annotations

from typing import Iterable

# Convolutions per block: VGG-19 (configuration "E") and VGG-16 (configuration "D").
_BLOCKS = {"vgg19": (2, 2, 4, 4, 4), "vgg16": (2, 2, 3, 3, 3)}
MODELS = tuple(_BLOCKS)
MODEL_NAMES = {"vgg19": "VGG-19", "vgg16": "VGG-16"}


def layer_names(model: str = "vgg19") -> tuple[str, ...]:
    """All layer names of ``model``'s feature stack, in torchvision's order (conv, relu, ..., pool)."""
    if model not in _BLOCKS:
        raise ValueError(f"--model must be one of {', '.join(MODELS)}; got {model!r}")
    names = []
    for block, n_convs in enumerate(_BLOCKS[model], start=1):
        for n in range(1, n_convs + 1):
            names += [f"conv{block}_{n}", f"relu{block}_{n}"]
        names.append(f"pool{block}")
    return tuple(names)


def vgg19_layer_names() -> list[str]:
    """All layer names of VGG-19's feature stack, in order (conv, relu, ..., pool)."""
    return list(layer_names("vgg19"))


LAYER_NAMES = layer_names("vgg19")


def check_layers(layers: Iterable[str], model: str = "vgg19") -> None:
    """``ValueError`` (one line) naming any layer ``model`` lacks, e.g. relu3_4 on VGG-16."""
    names = layer_names(model)
    unknown = [name for name in dict.fromkeys(layers) if name not in names]
    if unknown:
        relus = [n for n in names if n.startswith("relu")]
        raise ValueError(f"{MODEL_NAMES[model]} (--model {model}) has no layer {', '.join(unknown)}; "
                         f"expected one of {', '.join(relus)}")
