"""The stem per input size (`model.stem`), for the torchvision ResNets and the ResNet-9 family.

- s1: 3x3 conv stride 1, no max-pool. The reference's 28-px stem: stage 1 sees 28x28.
- s2: 3x3 conv stride 2, no max-pool: stage 1 sees size/2 (32x32 at 64 px).
- imagenet: a 7x7 conv stride 2 + 3x3/2 max-pool: stage 1 sees size/4.

`auto` keeps stage 1 near the 28-32 px the recipes were tuned at, which also keeps the compute
per image within ~1.4x of the 28-px model at 64 and 128 px: s1 at 28, s2 at 64, imagenet at 128
and 224 (56 px at stage 1, torchvision's own ImageNet geometry). At 64 px this was measured on
validation for the fast recipe (docs/data.md): s2 matched s1 (val 0.9897 vs 0.9901) at a quarter
of its compute, and beat the imagenet stem (0.9842), which costs a third of s2's. For the
ResNet-18 and at 128/224 px the defaults follow the same rule, not a measurement. Pretrained
ImageNet weights transfer with every stem: the 7x7 filters as they are, or resized to 3x3
(`resnet.adapt_stem_weight`).
"""

from __future__ import annotations

from torch import nn

STEMS = ("auto", "s1", "s2", "imagenet")
DEFAULT_STEM = {28: "s1", 64: "s2", 128: "imagenet", 224: "imagenet"}
#: How much each stem shrinks the image before the first stage.
STEM_STRIDE = {"s1": 1, "s2": 2, "imagenet": 4}


def resolve_stem(stem: str, size: int) -> str:
    """`auto` -> the default for `size` (sizes other than the four: s1 up to 48 px, else s2)."""
    if stem not in STEMS:
        raise ValueError(f"unknown model.stem {stem!r} (known: {', '.join(STEMS)})")
    if stem != "auto":
        return stem
    return DEFAULT_STEM.get(size, "s1" if size <= 48 else "s2")


def set_stem(model: nn.Module, kind: str) -> nn.Module:
    """Replace a torchvision ResNet's `conv1`/`maxpool` with a resolved stem kind, in place."""
    width = model.conv1.out_channels
    if kind == "imagenet":
        model.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        model.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    else:
        stride = 1 if kind == "s1" else 2
        model.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=stride, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model
