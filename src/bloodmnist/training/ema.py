"""Exponential moving average of the weights (fast recipe), via torch's AveragedModel.

The BatchNorm running statistics are averaged together with the weights (`use_buffers=True`),
so the EMA model carries statistics that match its own weights and needs no extra pass over
the data before validation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightEMA:
    """EMA copy of a model, updated after every optimiser step."""

    def __init__(self, model: nn.Module, decay: float):
        self.averaged = AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True
        )

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)

    def load(self, state: dict[str, Any]) -> None:
        """Restore the EMA weights from a checkpoint's `model` entry (a resumed run)."""
        self.module.load_state_dict(state)
        self.averaged.n_averaged.fill_(1)  # non-zero: continue averaging, do not re-copy


def make_ema(model: nn.Module, decay: float) -> WeightEMA | None:
    """A WeightEMA for `model` (the bare module, not a DDP wrapper), or None when decay is 0."""
    return WeightEMA(model, decay) if decay > 0 else None
