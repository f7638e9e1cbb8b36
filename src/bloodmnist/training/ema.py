"""Exponential moving average of the weights (fast recipe), kept in torch's AveragedModel.

The BatchNorm running statistics are averaged together with the weights (`use_buffers=True`),
so the EMA model carries statistics that match its own weights and needs no extra pass over
the data before validation.

`update` applies torch's own EMA rule (`get_ema_multi_avg_fn`: a foreach lerp per dtype group)
itself instead of calling `AveragedModel.update_parameters`, which copies its step counter (a CPU
tensor) to the model's device every step: on CUDA a synchronous copy, so each step waited for the
kernels queued before it instead of the CPU running ahead. The numbers are the same
(tests/test_ema.py); the "first update copies" state is a host-side flag.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightEMA:
    """EMA copy of a model, updated after every optimiser step without a host sync."""

    def __init__(self, model: nn.Module, decay: float):
        self.averaged = AveragedModel(model, use_buffers=True)
        self._ema = get_ema_multi_avg_fn(decay)
        self._started = False  # n_averaged > 0, tracked on the host
        self._pairs: tuple[nn.Module, list[tuple[list, list]]] | None = None

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        groups = self._groups(model)
        if not self._started:  # the first update copies, as AveragedModel does
            for ema_list, model_list in groups:
                for a, b in zip(ema_list, model_list, strict=True):
                    a.copy_(b)
            self._started = True
        else:
            for ema_list, model_list in groups:
                self._ema(ema_list, model_list, None)
        self.averaged.n_averaged += 1  # kept for state_dict compatibility (a CPU tensor)

    def _groups(self, model: nn.Module) -> list[tuple[list, list]]:
        """(EMA tensors, model tensors) per device and dtype, built once per source model: the
        detached tensors share storage with the parameters the optimiser updates in place."""
        if self._pairs is None or self._pairs[0] is not model:
            groups: dict[tuple[torch.device, torch.dtype], tuple[list, list]] = {}
            for a, b in zip(_tensors(self.module), _tensors(model), strict=True):
                pair = groups.setdefault((a.device, a.dtype), ([], []))
                pair[0].append(a.detach())
                pair[1].append(b.detach())
            self._pairs = (model, list(groups.values()))
        return self._pairs[1]

    def load(self, state: dict[str, Any]) -> None:
        """Restore the EMA weights from a checkpoint's `model` entry (a resumed run)."""
        self.module.load_state_dict(state)
        self.averaged.n_averaged.fill_(1)  # non-zero: continue averaging, do not re-copy
        self._started = True


def _tensors(model: nn.Module):
    return itertools.chain(model.parameters(), model.buffers())


def make_ema(model: nn.Module, decay: float) -> WeightEMA | None:
    """A WeightEMA for `model` (the bare module, not a DDP wrapper), or None when decay is 0."""
    return WeightEMA(model, decay) if decay > 0 else None
