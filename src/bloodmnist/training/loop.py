"""One training epoch and one validation pass: the hot loop, kept short and sync-free."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bloodmnist.data.augment import mix_batch
from bloodmnist.data.loader import TrainBatches
from bloodmnist.runtime import Runtime
from bloodmnist.training.sam import SharpnessAware
from bloodmnist.training.teacher import Distillation


@dataclass
class EpochStats:
    loss: float
    acc: float
    samples: int
    skipped: int = 0  # optimiser steps fp16's GradScaler skipped (overflowed gradients)


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite."""


def _all_reduce(t: torch.Tensor, rt: Runtime) -> torch.Tensor:
    if rt.distributed:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


def batch_loss(
    model: nn.Module,
    x: torch.Tensor,
    targets: tuple[torch.Tensor, torch.Tensor, float],
    rt: Runtime,
    label_smoothing: float,
    distill: Distillation | None = None,
    soft: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's training loss and fp32 logits; `targets` is (y, y_b, lam) of the mixing."""
    y, y_b, lam = targets
    with rt.autocast():
        logits = model(x)
    logits = logits.float()
    loss = lam * F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    if lam < 1.0:
        loss = loss + (1 - lam) * F.cross_entropy(logits, y_b, label_smoothing=label_smoothing)
    if distill is not None:
        loss = distill.loss(x, logits, loss, soft)
    return loss, logits


def _scaled(loss: torch.Tensor, scaler: torch.amp.GradScaler | None) -> torch.Tensor:
    return loss if scaler is None else scaler.scale(loss)


def _step(
    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, totals: torch.Tensor
) -> None:
    """The optimiser step; with fp16's scaler, a skipped step (the scale drops only then) adds
    1 to totals[2] on the device, without a host sync of its own."""
    if scaler is None:
        optimizer.step()
        return
    # skipped when a gradient overflowed; GradScaler reads that flag (one host sync)
    before = scaler._scale.clone() if scaler._scale is not None else None
    scaler.step(optimizer)
    scaler.update()
    if before is not None:
        totals[2] += (scaler._scale < before).double().reshape(())


def train_one_epoch(
    model: nn.Module,
    batches: TrainBatches,
    optimizer: torch.optim.Optimizer,
    rt: Runtime,
    epoch: int,
    gen: torch.Generator,
    rng: np.random.Generator,
    mixup_alpha: float,
    label_smoothing: float = 0.0,
    check_stop: Callable[[], None] | None = None,
    after_step: Callable[[], None] | None = None,
    cutmix_alpha: float = 0.0,
    distill: Distillation | None = None,
    on_step: Callable[[int], None] | None = None,
    sam: SharpnessAware | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> EpochStats:
    """Train for one epoch. Loss/accuracy accumulate on the device; one host sync at the end
    (fp16 adds GradScaler's own per-step check for overflowed gradients).

    `after_step` runs after every optimiser step (per-step LR schedule, weight EMA). With
    `distill` the loss is the distillation loss, its teacher forwarded on this very batch (or
    its soft-label file read at the batch's rows).
    `on_step` gets each step's batch size (host-side: the progress bar, no device sync). With
    `sam` each step takes the gradient at SAM's perturbed weights (the reported loss and
    accuracy are the unperturbed first pass's). `scaler` (fp16): the backward passes run on the
    scaled loss and the step on the unscaled gradients (SAM's direction is scale-free).
    """
    model.train()
    # [loss sum, correct, skipped steps] on the device: no .item() per step; the sample count
    # is host-side.
    totals = torch.zeros(3, dtype=torch.float64, device=rt.device)
    samples = 0
    for x, y, idx in batches.epoch(epoch, gen):
        # mixing the row indices gives the partners' rows (a soft-label file's lookup) and,
        # through them, the partners' labels: the same random draws as mixing y
        x, idx_b, lam = mix_batch(x, idx, mixup_alpha, cutmix_alpha, rng, gen)
        y_b = y if lam >= 1.0 else batches.labels.index_select(0, idx_b)
        # the teacher answers once per batch, also when SAM takes a second pass
        soft = distill.soft(x, (idx, idx_b, lam)) if distill is not None else None
        args = (model, x, (y, y_b, lam), rt, label_smoothing, distill, soft)
        loss, logits = batch_loss(*args)
        optimizer.zero_grad(set_to_none=True)
        _scaled(loss, scaler).backward()
        if sam is not None:
            sam.replace_grad(lambda a=args: _scaled(batch_loss(*a)[0], scaler).backward())
        _step(optimizer, scaler, totals)
        if after_step is not None:
            after_step()
        if check_stop is not None:
            check_stop()  # a flag test, no device sync
        samples += y.shape[0]
        if on_step is not None:
            on_step(y.shape[0])
        _add_batch(totals, loss, logits, (y, y_b, lam))
    return _epoch_stats(totals, samples, rt, epoch)


def _epoch_stats(totals: torch.Tensor, samples: int, rt: Runtime, epoch: int) -> EpochStats:
    """The epoch's mean loss and accuracy over every rank (the one host sync of the epoch);
    DivergenceError for a loss that is not finite."""
    count = torch.tensor([float(samples)], dtype=torch.float64, device=rt.device)
    loss_sum, correct, skipped, samples = _all_reduce(torch.cat([totals, count]), rt).tolist()
    mean_loss = loss_sum / max(samples, 1)
    if not math.isfinite(mean_loss):
        raise DivergenceError(f"training loss is {mean_loss} in epoch {epoch}")
    # every rank takes every step: the all-reduced count is world_size times the steps skipped
    steps_skipped = round(skipped / rt.world_size)
    return EpochStats(mean_loss, correct / max(samples, 1), int(samples), steps_skipped)


def _add_batch(totals: torch.Tensor, loss: torch.Tensor, logits: torch.Tensor, targets) -> None:
    """Add a batch's loss sum and correct count to `totals` on the device (no sync). MixUp
    accuracy credits each sample by the weight of the target it is scored against (with alpha
    0.001 lam is ~0 or ~1, so scoring only against y would be ~50% wrong)."""
    y, y_b, lam = targets
    pred = logits.argmax(1)
    correct = lam * (pred == y).sum() + (1 - lam) * (pred == y_b).sum()
    totals[:2] += torch.stack([loss.detach().double() * y.shape[0], correct.double()])


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (validation loss from probabilities)."""
    p = probs[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(p, 1e-12, None)).mean())
