"""The training run: epochs, validation, schedule, early stopping, checkpoints, history."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bloodmnist.config import Config
from bloodmnist.data.loader import Normalizer, TrainBatches, to_tensor
from bloodmnist.data.npz import Dataset
from bloodmnist.evaluation.metrics import accuracy, medmnist_auc
from bloodmnist.evaluation.predict import predict_probs
from bloodmnist.runtime import Runtime
from bloodmnist.training.checkpoint import save_checkpoint, unwrap
from bloodmnist.training.loop import nll, train_one_epoch
from bloodmnist.training.rundir import write_history
from bloodmnist.training.schedule import TwoPhaseSchedule

log = logging.getLogger("bloodmnist")


@dataclass
class TrainState:
    """Everything besides model/optimiser/schedule that a resumed run needs."""

    epoch: int = 0  # last completed epoch (1-based)
    best_val_acc: float = -1.0
    best_epoch: int = 0
    train_seconds: float = 0.0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


def epoch_generators(seed: int, epoch: int, rank: int, device: torch.device):
    """Augmentation and MixUp RNGs derived from (seed, epoch, rank) alone, so an epoch's random
    draws do not depend on what ran before it (exact resume, any batch order of epochs)."""
    gen = torch.Generator(device=device)
    gen.manual_seed((seed * 1_000_003 + epoch) * 4099 + rank)
    return gen, np.random.default_rng([seed, epoch, rank])


def rng_states(gen_epoch: int) -> dict[str, Any]:
    """Global RNG states (Python, NumPy, torch CPU/CUDA) in a weights_only-loadable form."""
    np_state = np.random.get_state()
    return {
        "python": list(random.getstate()[1]) + [random.getstate()[2] or 0],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "augment_epoch": gen_epoch,
    }


class Trainer:
    def __init__(
        self,
        cfg: Config,
        rt: Runtime,
        run_dir: Path,
        data: Dataset,
        model: nn.Module,
        pretrained: dict[str, Any] | None = None,
    ):
        self.cfg, self.rt, self.run_dir = cfg, rt, run_dir
        self.pretrained = pretrained or {}
        self.model = model
        per_rank = cfg.optim.batch_size // rt.world_size
        self.optimizer = torch.optim.SGD(
            model.parameters(),
            lr=cfg.optim.lr,
            momentum=cfg.optim.momentum,
            weight_decay=cfg.optim.weight_decay,
        )
        self.schedule = TwoPhaseSchedule(self.optimizer, cfg.schedule)
        self.normalize = Normalizer(cfg.data.mean, cfg.data.std, rt.device, rt.channels_last)
        self.batches = TrainBatches(
            images=to_tensor(data.train.images, rt.device),
            labels=torch.from_numpy(data.train.labels).to(rt.device),
            batch_size=per_rank,
            augment_cfg=cfg.augment,
            normalize=self.normalize,
            seed=cfg.train.seed,
            rank=rt.rank,
            world_size=rt.world_size,
        )
        self.val_images = to_tensor(data.val.images, rt.device)
        self.val_labels = data.val.labels
        self.state = TrainState()
        self.check_stop: Callable[[], None] | None = None  # set by the caller (signal handling)

    # -- checkpoints -------------------------------------------------------------------------
    def checkpoint(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "epoch": self.state.epoch,
            "config": self.cfg.to_dict(),
            "train_state": asdict(self.state),
            "rng": rng_states(self.state.epoch + 1),
            "metrics": metrics,
            "arch": self.cfg.model.arch,
            "num_classes": self.cfg.model.num_classes,
            "world_size": self.rt.world_size,
            "pretrained": self.pretrained,
        }

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Continue from a last.pt: model, optimiser, schedule, early-stopping state, history."""
        unwrap(self.model).load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt["schedule"])
        self.state = TrainState(**ckpt["train_state"])

    # -- one epoch ---------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        probs = predict_probs(
            self.model, self.val_images, self.rt, self.normalize, self.cfg.eval.batch_size
        )
        pred = probs.argmax(1)
        return {
            "val_loss": nll(probs, self.val_labels),
            "val_acc": accuracy(self.val_labels, pred),
            "val_auc": medmnist_auc(self.val_labels, probs),
        }

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        gen, rng = epoch_generators(self.cfg.train.seed, epoch, self.rt.rank, self.rt.device)
        lr = self.schedule.lr
        stats = train_one_epoch(
            self.model,
            self.batches,
            self.optimizer,
            self.rt,
            epoch,
            gen,
            rng,
            self.cfg.augment.mixup_alpha,
            self.cfg.train.label_smoothing,
            self.check_stop,
        )
        val = self.validate()
        self.schedule.step(epoch, val["val_acc"])
        seconds = time.perf_counter() - t0
        return {
            "epoch": epoch,
            "train_loss": stats.loss,
            "train_acc": stats.acc,
            **val,
            "lr": lr,
            "seconds": seconds,
        }

    # -- the run -----------------------------------------------------------------------------
    def fit(self) -> TrainState:
        cfg, st = self.cfg.train, self.state
        ckpt_dir = self.run_dir / "checkpoints"
        while st.epoch < cfg.epochs and not st.stopped_early:
            row = self.run_epoch(st.epoch + 1)
            st.epoch = row["epoch"]
            st.train_seconds += row["seconds"]
            st.history.append(row)
            improved = row["val_acc"] > st.best_val_acc
            if improved:
                st.best_val_acc, st.best_epoch = row["val_acc"], st.epoch
            st.stopped_early = st.epoch - st.best_epoch >= cfg.early_stop_patience
            log.info(
                "epoch %d/%d  train_loss %.4f  train_acc %.4f  val_loss %.4f  val_acc %.4f  "
                "val_auc %.4f  lr %.5f  %.1fs%s",
                st.epoch,
                cfg.epochs,
                row["train_loss"],
                row["train_acc"],
                row["val_loss"],
                row["val_acc"],
                row["val_auc"],
                row["lr"],
                row["seconds"],
                "  *best*" if improved else "",
            )
            if self.rt.is_main:
                state = self.checkpoint({k: v for k, v in row.items() if k != "epoch"})
                if improved:
                    save_checkpoint(state, ckpt_dir / "best.pt")
                save_checkpoint(state, ckpt_dir / "last.pt")
                write_history(self.run_dir / "history.csv", st.history)
        if st.stopped_early:
            log.info(
                "early stopping: no val_acc gain for %d epochs (best %.4f at epoch %d)",
                cfg.early_stop_patience,
                st.best_val_acc,
                st.best_epoch,
            )
        return st
