"""FLOPs of a model per image, with torch's own counter (multiply and add counted apart).

A training step is counted as what the counter sees for forward + backward (about 3x the
forward); BatchNorm, activations, pooling and the optimiser's elementwise updates are not
counted (they are a few percent of a convolutional net's arithmetic). Muon's matrix products
are not elementwise: a run adds them (bloodmnist.training.optim.step_flops).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def flops_per_image(model: nn.Module, size: int = 28) -> dict[str, float]:
    """{'train': forward+backward FLOPs, 'forward': eval forward FLOPs}, per image, on CPU fp32.

    Counts a copy, so the caller's model (its device, mode, BN statistics) is untouched."""
    net = _plain_batchnorm(copy.deepcopy(model)).float().cpu()
    for p in net.parameters():  # a frozen model (a distillation teacher) still counts a step
        p.requires_grad_(True)
    x = torch.randn(2, 3, size, size)
    net.train()
    with FlopCounterMode(display=False) as train:
        net(x).sum().backward()
    net.eval()
    with FlopCounterMode(display=False) as fwd, torch.no_grad():
        net(x)
    return {"train": train.get_total_flops() / 2, "forward": fwd.get_total_flops() / 2}


def _plain_batchnorm(module: nn.Module) -> nn.Module:
    """Synchronised BatchNorm layers (torchrun's sync_bn) as plain ones, which cost the same:
    torch's SyncBatchNorm refuses CPU tensors, and a counting pass must not all-reduce."""
    for name, child in module.named_children():
        synced = isinstance(child, nn.SyncBatchNorm) or (
            isinstance(child, nn.BatchNorm2d) and type(child) is not nn.BatchNorm2d
        )
        if synced:
            setattr(module, name, nn.BatchNorm2d(child.num_features, child.eps, child.momentum))
        else:
            _plain_batchnorm(child)
    return module


def train_pflop(train_flops_per_image: float, images_seen: int) -> float:
    """PFLOP of a run's training steps (validation and test passes not included)."""
    return train_flops_per_image * images_seen / 1e15
