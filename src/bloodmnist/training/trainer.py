"""The training run: epochs, validation, schedule, early stopping, checkpoints, history."""

from __future__ import annotations

import logging
import math
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
from bloodmnist.errors import CheckpointError
from bloodmnist.evaluation.metrics import accuracy, medmnist_auc
from bloodmnist.evaluation.predict import predict_probs
from bloodmnist.model.stems import resolve_stem
from bloodmnist.progress import TrainProgress
from bloodmnist.runtime import Runtime, broadcast_object, per_rank_batch, sync_buffers
from bloodmnist.training.checkpoint import save_checkpoint, unwrap
from bloodmnist.training.ema import make_ema
from bloodmnist.training.loop import DivergenceError, EpochStats, nll, train_one_epoch
from bloodmnist.training.model_setup import compile_for_training, sgd_param_groups
from bloodmnist.training.optim import build_optimizer
from bloodmnist.training.rundir import write_history
from bloodmnist.training.sam import make_sam
from bloodmnist.training.schedule import build_schedule
from bloodmnist.training.teacher import make_distillation

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


def restore_rng(states: dict[str, Any]) -> None:
    """Put back the global RNG states saved by `rng_states` (a resumed run continues them)."""
    py = [int(v) for v in states["python"][:-1]]
    random.setstate((3, tuple(py), float(states["python"][-1]) or None))
    np_keys = states["numpy"]["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", np_keys, int(states["numpy"]["pos"]), 0, 0.0))
    torch.set_rng_state(states["torch"].cpu())
    if states["cuda"] and torch.cuda.is_available():
        if len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])


class Trainer:
    def __init__(
        self,
        cfg: Config,
        rt: Runtime,
        run_dir: Path,
        data: Dataset,
        model: nn.Module,
        pretrained: dict[str, Any] | None = None,
        progress: bool = False,
    ):
        self.cfg, self.rt, self.run_dir = cfg, rt, run_dir
        self.pretrained = pretrained or {}
        self.model = model
        # what the training step calls: the same weights, behind torch.compile with
        # runtime.compile; validation and checkpoints keep using the eager self.model
        self.step_model = compile_for_training(model, cfg, rt)
        per_rank = per_rank_batch(cfg.optim.batch_size, rt.world_size)
        self.optimizer = build_optimizer(model, cfg, sgd_param_groups(model, cfg))
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
        self.schedule = build_schedule(
            self.optimizer, cfg.schedule, cfg.train.epochs, len(self.batches)
        )
        self.ema = make_ema(unwrap(model), cfg.train.ema_decay)  # None for the reference recipe
        # train.teacher: frozen teacher model(s) (distill.teacher.models, for FLOP counting)
        self.distill = make_distillation(cfg, rt, data)
        self.sam = make_sam(self.step_model, cfg.optim.sam_rho)  # None unless optim.sam_rho > 0
        self.scaler = rt.grad_scaler()  # fp16 only
        self.val_images = to_tensor(data.val.images, rt.device)
        self.val_labels = data.val.labels
        self.state = TrainState()
        self.check_stop: Callable[[], None] | None = None  # set by the caller (signal handling)
        # a live bar per epoch when `progress` (the caller checked that stderr is a terminal)
        per_rank_images = -(-len(data.train) // rt.world_size)
        self.progress = TrainProgress(progress, cfg.train.epochs, per_rank_images)
        # called with each epoch's history row once it is saved (tracking, search pruning)
        self.on_epoch: Callable[[dict[str, Any]], None] | None = None

    # -- checkpoints -------------------------------------------------------------------------
    @property
    def eval_model(self) -> nn.Module:
        """What is validated, saved as the checkpoint's `model` and tested: the EMA when on."""
        return self.ema.module if self.ema is not None else self.model

    def _after_step(self) -> Callable[[], None] | None:
        """Per-step work (one-cycle LR, EMA update); None for the reference recipe."""
        if self.cfg.schedule.kind == "two_phase" and self.ema is None:
            return None

        def hook() -> None:
            self.schedule.step_batch()
            if self.ema is not None:
                self.ema.update(unwrap(self.model))

        return hook

    def checkpoint(self, metrics: dict[str, Any]) -> dict[str, Any]:
        extra = {"train_model": unwrap(self.model).state_dict()} if self.ema is not None else {}
        if self.scaler is not None:  # fp16: a resumed run continues with the scale reached
            extra["grad_scaler"] = self.scaler.state_dict()
        return {
            **extra,  # with EMA: the raw weights, which a resumed run continues to train
            "model": unwrap(self.eval_model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "epoch": self.state.epoch,
            "config": self.cfg.to_dict(),
            "train_state": asdict(self.state),
            "rng": rng_states(self.state.epoch + 1),
            "metrics": metrics,
            "arch": self.cfg.model.arch,
            "stem": resolve_stem(self.cfg.model.stem, self.cfg.data.size),  # checkpoint_config
            "num_classes": self.cfg.model.num_classes,
            "world_size": self.rt.world_size,
            "pretrained": self.pretrained,
        }

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Continue from a last.pt: model, optimiser, schedule, early-stopping state, history and
        the global RNG states; a file that does not fit gives one CheckpointError line."""
        try:
            self._restore(ckpt)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            raise CheckpointError(
                f"cannot resume from {self.run_dir / 'checkpoints' / 'last.pt'} ({first}); it does "
                "not match this version's model or training state: start a new run"
            ) from None

    def _restore(self, ckpt: dict[str, Any]) -> None:
        if self.ema is not None and "train_model" in ckpt:
            unwrap(self.model).load_state_dict(ckpt["train_model"])
            self.ema.load(ckpt["model"])
        else:
            unwrap(self.model).load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt["schedule"])
        if self.scaler is not None and "grad_scaler" in ckpt:
            self.scaler.load_state_dict(ckpt["grad_scaler"])
        self.state = TrainState(**ckpt["train_state"])
        if "rng" in ckpt:
            restore_rng(ckpt["rng"])

    # -- one epoch ---------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Validation metrics; under torchrun each rank predicts a shard (see predict_probs)."""
        sync_buffers(self.eval_model, self.rt)
        probs = predict_probs(
            self.eval_model, self.val_images, self.rt, self.normalize, self.cfg.eval.batch_size
        )
        pred = probs.argmax(1)
        metrics = {
            "val_loss": nll(probs, self.val_labels),
            "val_acc": accuracy(self.val_labels, pred),
            "val_auc": medmnist_auc(self.val_labels, probs),
        }
        # Every rank holds the same gathered probabilities, but best-epoch, early-stopping and
        # plateau decisions must agree exactly, so all ranks take rank 0's numbers.
        return broadcast_object(self.rt, metrics)

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        gen, rng = epoch_generators(self.cfg.train.seed, epoch, self.rt.rank, self.rt.device)
        lr = self.schedule.lr
        self.progress.start_epoch(epoch)
        try:
            stats, val = self._train_and_validate(epoch, gen, rng)
        finally:  # an error or a stop request must not leave a half-drawn bar behind
            self.progress.end_epoch()
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

    def _train_and_validate(self, epoch: int, gen, rng) -> tuple[EpochStats, dict[str, float]]:
        stats = train_one_epoch(
            self.step_model,
            self.batches,
            self.optimizer,
            self.rt,
            epoch,
            gen,
            rng,
            self.cfg.augment.mixup_alpha,
            self.cfg.train.label_smoothing,
            self.check_stop,
            after_step=self._after_step(),
            cutmix_alpha=self.cfg.augment.cutmix_alpha,
            distill=self.distill,
            on_step=self.progress.step,
            sam=self.sam,
            scaler=self.scaler,
        )
        if stats.skipped and self.rt.is_main:  # fp16 only: the scale adapts, but say so;
            # one skip is GradScaler probing a doubled scale (every 2000 good steps): INFO
            log.log(
                logging.WARNING if stats.skipped > 1 else logging.INFO,
                "epoch %d: %d of %d optimiser steps skipped: fp16 gradients overflowed (the loss "
                "scale was lowered; many skips: try --precision bf16 or fp32)",
                epoch,
                stats.skipped,
                len(self.batches),
            )
        self.progress.validating()
        return stats, self.validate()

    # -- the run -----------------------------------------------------------------------------
    def fit(self) -> TrainState:
        cfg, st = self.cfg.train, self.state
        ckpt_dir = self.run_dir / "checkpoints"
        while st.epoch < cfg.epochs and not st.stopped_early:
            self._check_stop()  # a signal during validation/saving stops before the next epoch
            row = self.run_epoch(st.epoch + 1)
            if not math.isfinite(row["val_loss"]):  # NaN outputs: never save such a model
                raise DivergenceError(
                    f"validation loss is {row['val_loss']} in epoch {row['epoch']} "
                    "(the model outputs NaN)"
                )
            st.epoch = row["epoch"]
            st.train_seconds += row["seconds"]
            st.history.append(row)
            # select=last: every epoch replaces best.pt, so the run ships its final (annealed)
            # epoch and early stopping never triggers
            improved = cfg.select == "last" or row["val_acc"] > st.best_val_acc
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
                ("  *kept*" if cfg.select == "last" else "  *best*") if improved else "",
            )
            if self.rt.is_main:
                state = self.checkpoint({k: v for k, v in row.items() if k != "epoch"})
                if improved:
                    save_checkpoint(state, ckpt_dir / "best.pt")
                save_checkpoint(state, ckpt_dir / "last.pt")
                write_history(self.run_dir / "history.csv", st.history)
            if self.on_epoch is not None:  # may raise (a pruned search trial stops here)
                self.on_epoch(row)
        if st.stopped_early:
            log.info(
                "early stopping: no val_acc gain for %d epochs (best %.4f at epoch %d)",
                cfg.early_stop_patience,
                st.best_val_acc,
                st.best_epoch,
            )
        self._check_stop()  # a signal in the last epoch: stop before the final test evaluation
        return st

    def _check_stop(self) -> None:
        if self.check_stop is not None:
            self.check_stop()
