"""Learning-rate schedules (reference two-phase; one-cycle for the fast recipe), each one object
with one state_dict."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, OneCycleLR, ReduceLROnPlateau

from bloodmnist.config import ScheduleConfig


class TwoPhaseSchedule:
    """Cosine annealing (T_max, eta_min) after each of epochs 1..cosine_epochs, then
    ReduceLROnPlateau on validation accuracy (mode max) for the rest of the run."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: ScheduleConfig):
        self.cfg = cfg
        self.optimizer = optimizer
        self.cosine = CosineAnnealingLR(optimizer, T_max=cfg.t_max, eta_min=cfg.eta_min)
        self.plateau = ReduceLROnPlateau(
            optimizer, mode="max", factor=cfg.plateau_factor, patience=cfg.plateau_patience
        )

    def step(self, epoch: int, val_acc: float) -> None:
        """Call once at the end of `epoch` (1-based) with that epoch's validation accuracy."""
        if epoch <= self.cfg.cosine_epochs:
            self.cosine.step()
        else:
            self.plateau.step(val_acc)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {"cosine": self.cosine.state_dict(), "plateau": self.plateau.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cosine.load_state_dict(state["cosine"])
        self.plateau.load_state_dict(state["plateau"])

    def step_batch(self) -> None:
        """Per-step hook; the two-phase schedule only moves at epoch ends."""


class OneCycleSchedule:
    """One-cycle LR per optimiser step (torch OneCycleLR): warm up to optim.lr over pct_start of
    the steps, then cosine-anneal to optim.lr / (div_factor * final_div_factor). With
    schedule.cycle_momentum (torch's default) every group's momentum moves the other way, from
    max_momentum to base_momentum at the peak LR and back; optim.momentum is then unused."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        cfg: ScheduleConfig,
        epochs: int,
        steps_per_epoch: int,
    ):
        self.optimizer = optimizer
        # OneCycleLR needs a few steps per phase; tiny smoke runs just see the cycle's start.
        least = math.ceil(3 / min(cfg.pct_start, 1 - cfg.pct_start)) + 2
        self.total_steps = max(least, epochs * steps_per_epoch)
        self.cycle = OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=self.total_steps,
            pct_start=cfg.pct_start,
            div_factor=cfg.div_factor,
            final_div_factor=cfg.final_div_factor,
            cycle_momentum=cfg.cycle_momentum,
            base_momentum=cfg.base_momentum,
            max_momentum=cfg.max_momentum,
        )

    def step(self, epoch: int, val_acc: float) -> None:
        """Epoch-end hook; the cycle moves per step."""

    def step_batch(self) -> None:
        # Past the planned steps (a resume with more --epochs) the LR stays at its final value.
        if self.cycle.last_epoch < self.total_steps - 1:
            self.cycle.step()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {"onecycle": self.cycle.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cycle.load_state_dict(state["onecycle"])
        # the saved cycle keeps the plan it was made with; a resume with another --epochs
        # finishes that plan, then holds its final LR (step_batch)
        self.total_steps = self.cycle.total_steps


def build_schedule(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, epochs: int, steps_per_epoch: int
) -> TwoPhaseSchedule | OneCycleSchedule:
    """The schedule named by `schedule.kind`."""
    if cfg.kind == "onecycle":
        return OneCycleSchedule(optimizer, cfg, epochs, steps_per_epoch)
    return TwoPhaseSchedule(optimizer, cfg)
