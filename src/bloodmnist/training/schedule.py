"""The reference two-phase learning-rate schedule, as one object with one state_dict."""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, ReduceLROnPlateau

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
