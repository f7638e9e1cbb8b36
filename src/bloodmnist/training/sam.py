"""Sharpness-aware minimisation (Foret et al., ICLR 2021): `optim.sam_rho`.

Each step first computes the batch's gradient g at the weights w, then the gradient at
w + rho * g / ||g|| (the worst nearby point to first order), and the optimiser steps from w along
that second gradient: it prefers minima whose neighbourhood is flat too, which tends to
generalise better on small datasets. It doubles the forward and backward passes per step (the
run's `train_pflop` counts both). The norm is taken over all trainable parameters on the device
(no host sync); the weights are restored exactly, from a copy, before the optimiser's step.
BatchNorm's running statistics are updated by the first pass only: the second pass sees the
same batch at perturbed weights, and counting it twice would bias the statistics towards them.

rho is an absolute radius in weight space. Under `optim.kind: muon` every filter bank is held
at norm sqrt(out channels), so the same rho is a fixed share of the weights' size throughout;
under SGD the weight decay shrinks the weights, so it is a growing share (ASAM's per-weight
scaling is not implemented).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class SharpnessAware:
    """The second, perturbed gradient of a SAM step, for any optimiser (SGD or Muon)."""

    def __init__(self, model: nn.Module, rho: float):
        self.rho = rho
        self.model = model
        self.norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]

    def replace_grad(self, backward: Callable[[], None]) -> None:
        """Call after the first backward: leaves in every `.grad` the gradient that `backward`
        (a fresh forward and backward of the same batch) computes at the perturbed weights, and
        the weights as they were."""
        params = [p for p in self.model.parameters() if p.requires_grad and p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        # under DDP these gradients are already averaged over the ranks, so every rank moves to
        # the same perturbed weights: the step is SAM's on the global batch, as on one process
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        scale = self.rho / (norm + 1e-12)
        with torch.no_grad():
            saved = [p.detach().clone() for p in params]
            torch._foreach_add_(params, torch._foreach_mul(grads, scale))
        for p in params:
            p.grad = None
        with self._kept_norm_stats():
            backward()
        with torch.no_grad():
            torch._foreach_copy_(params, saved)

    @contextmanager
    def _kept_norm_stats(self) -> Iterator[None]:
        """BatchNorm's running statistics and batch counters as they were before the pass
        (restored from copies: exact for any momentum, and no module attribute changes, which
        would make torch.compile trace the model again)."""
        buffers = [
            b
            for m in self.norms
            if m.training and m.track_running_stats
            for b in (m.running_mean, m.running_var, m.num_batches_tracked)
            if b is not None
        ]
        kept = [b.clone() for b in buffers]
        try:
            yield
        finally:
            with torch.no_grad():
                for b, k in zip(buffers, kept, strict=True):
                    b.copy_(k)


def make_sam(model: nn.Module, rho: float) -> SharpnessAware | None:
    """SAM with radius `rho` (optim.sam_rho); None when 0 (plain steps)."""
    return SharpnessAware(model, rho) if rho > 0 else None
