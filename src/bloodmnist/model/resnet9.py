"""A ResNet-9-style network for small images (the DAWNBench CIFAR-10 family), with knobs.

prep conv -> [conv, max-pool, `depth` residual blocks] -> [conv, max-pool] -> [conv, max-pool,
`depth` residual blocks] -> global max-pool -> linear. Channels are (64, 128, 256, 512) x
`width`. The prep conv is the stem (`model.stem`, model/stems.py): 3x3 stride 1 (s1, the 28-px
layout), 3x3 stride 2 (s2) or a 7x7 stride-2 conv and a 3x3/2 max-pool (imagenet), so that
larger images reach the first stage at a resolution near 28-32 px. With `whiten` (arch resnet9w)
the prep conv is a fixed patch-whitening 3x3 conv fitted to the training images plus a learned
1x1 conv (model/whiten.py). At 28 px and width 0.5 a forward pass is ~0.14 GFLOP, a seventh of
the adapted ResNet-18: most of its compute runs at 14 px and below, where a 28-px image has
little left to resolve. At 28 px the third pooling halves a 7x7 map to 3x3 and so drops its last
row and column (the image's bottom and right ~4 px); `cover` (arch resnet9c) pools odd maps with
overlapping 3x3/2 windows that keep them, at the same size and FLOPs.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from bloodmnist.model.whiten import PatchWhitening


def conv_bn(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _prep(c_out: int, stem: str, whiten: bool) -> nn.Sequential:
    """The first layer for a resolved stem kind (s1 | s2 | imagenet)."""
    pool = [nn.MaxPool2d(3, 2, padding=1)] if stem == "imagenet" else []
    stride = 1 if stem == "s1" else 2
    if whiten:  # a fixed patch-whitening 3x3 conv, then a learned 1x1 (model/whiten.py); the
        # imagenet geometry keeps its 3x3 patches: stride 2 and the max-pool, no 7x7 filters
        return nn.Sequential(PatchWhitening(stride=stride), conv_bn(27, c_out, 1), *pool)
    return nn.Sequential(*conv_bn(3, c_out, 7 if stem == "imagenet" else 3, stride), *pool)


class Residual(nn.Module):
    """x + two conv-BN-ReLU layers (the ResNet-9 residual: no projection, same width)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x):
        return x + self.body(x)


class CoverPool(nn.Module):
    """Halve a map like MaxPool2d(2), but let an odd map's last row and column count: 2x2/2
    windows on an even side, overlapping 3x3/2 windows on an odd one (7 -> 3 covers rows 0-6,
    where 2x2/2 drops row 6). The same output size and FLOPs; an even map pools as before."""

    def forward(self, x: Tensor) -> Tensor:
        odd = x.shape[-1] % 2  # fixed per image size: a traced/exported graph keeps one kernel
        return F.max_pool2d(x, 2 + odd, 2)


def _stage(c_in: int, c_out: int, blocks: int, cover: bool = False) -> nn.Sequential:
    pool = CoverPool() if cover else nn.MaxPool2d(2)
    return nn.Sequential(conv_bn(c_in, c_out), pool, *[Residual(c_out) for _ in range(blocks)])


class ResNet9(nn.Module):
    def __init__(
        self,
        num_classes: int = 8,
        width: float = 1.0,
        depth: int = 1,
        whiten: bool = False,
        stem: str = "s1",
        cover: bool = False,
    ):
        super().__init__()
        c = [max(8, round(64 * width * m)) for m in (1, 2, 4, 8)]
        self.features = nn.Sequential(
            _prep(c[0], stem, whiten),
            _stage(c[0], c[1], depth, cover),
            _stage(c[1], c[2], 0, cover),
            _stage(c[2], c[3], depth, cover),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(c[3], num_classes)

    def forward(self, x):
        return self.fc(self.features(x))
