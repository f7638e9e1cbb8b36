"""Models by name: adding a model is adding one entry to `ARCHS`.

Every builder takes (num_classes, size, width, depth, stem) and returns an nn.Module mapping
(N,3,size,size) images to (N,num_classes) logits; `stem` is already resolved for the size
(s1 | s2 | imagenet, model/stems.py). `pretrained` names the builders whose layout
takes torchvision's ImageNet ResNet weights (`transfer_weights`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from bloodmnist.errors import ConfigError
from bloodmnist.model.resnet import adapted_torchvision_resnet, transfer_weights
from bloodmnist.model.resnet9 import ResNet9
from bloodmnist.model.stems import STEM_STRIDE, resolve_stem, set_stem

Builder = Callable[[int, int, float, int, str], nn.Module]


def _torchvision(name: str) -> Builder:
    return lambda n, size, width, depth, stem: set_stem(adapted_torchvision_resnet(name, n), stem)


ARCHS: dict[str, Builder] = {
    # The reference: torchvision ResNet-18, 3x3 stride-1 stem, no max-pool (28 px).
    # Its stem follows the input size (`model.stem`, model/stems.py): the reference's at 28 px.
    "resnet18": _torchvision("resnet18"),
    "resnet34": _torchvision("resnet34"),
    "resnet50": _torchvision("resnet50"),
    # Compute-efficient 28-px family (width/depth knobs): the fast and best recipes.
    "resnet9": lambda n, size, width, depth, stem: ResNet9(n, width, depth, stem=stem),
    # The same with poolings that keep an odd map's last row/column (28 px: 7 -> 3).
    "resnet9c": lambda n, size, width, depth, stem: ResNet9(n, width, depth, stem=stem, cover=True),
    # The same with a fixed patch-whitening first layer fitted to the training images.
    "resnet9w": lambda n, size, width, depth, stem: ResNet9(n, width, depth, True, stem),
}
#: torchvision's networks: built as they are, model.width/model.depth do not apply.
FIXED_SHAPE_ARCHS = frozenset({"resnet18", "resnet34", "resnet50"})
#: Architectures whose weights can start from torchvision's ImageNet ResNet-18 file.
PRETRAINED_ARCHS = frozenset({"resnet18"})


def build_model(
    arch: str = "resnet18",
    num_classes: int = 8,
    size: int = 28,
    state_dict: dict[str, torch.Tensor] | None = None,
    width: float = 1.0,
    depth: int = 1,
    stem: str = "auto",
) -> nn.Module:
    """The registered model `arch`; `state_dict` is a torchvision-layout ImageNet state_dict."""
    if arch not in ARCHS:
        raise ValueError(f"unknown model.arch {arch!r} (known: {', '.join(sorted(ARCHS))})")
    kind = resolve_stem(stem, size)
    _check_stage1(arch, kind, size)
    if arch in FIXED_SHAPE_ARCHS and (width, depth) != (1, 1):  # not refused: a tune space may
        # search model.arch and model.width together (configs/search/best.yaml)
        logging.getLogger(__name__).warning(
            "model.width=%g and model.depth=%d shape the resnet9 family only; %s is built as "
            "torchvision defines it",
            width,
            depth,
            arch,
        )
    model = ARCHS[arch](num_classes, size, width, depth, kind)
    if state_dict is not None:
        transfer_weights(model, state_dict)
    return model


def _check_stage1(arch: str, kind: str, size: int) -> None:
    """The ResNet-9 halves its input three times after the stem: at least 8 px must reach it."""
    stage1 = size // STEM_STRIDE[kind]
    if arch.startswith("resnet9") and stage1 < 8:
        raise ConfigError(
            f"model.stem {kind} leaves {stage1} px of a {size}-px image for {arch}'s first "
            "stage, too few for its three poolings; use model.stem s1 or s2 at this size"
        )


def model_from_config(cfg, state_dict: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """The model a Config (or a checkpoint's saved config) describes."""
    m = cfg.model
    return build_model(m.arch, m.num_classes, cfg.data.size, state_dict, m.width, m.depth, m.stem)
