"""`bloodmnist train`: set up, train, test once on the best checkpoint, write the run folder."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bloodmnist.atomic import read_json
from bloodmnist.config import Config, save_yaml
from bloodmnist.data.npz import Dataset, describe
from bloodmnist.data.source import DataInfo, fit_config, load_data
from bloodmnist.errors import BloodMNISTError, OutputError
from bloodmnist.runtime import (
    Runtime,
    from_main,
    host_info,
    main_first,
    seed_everything,
)
from bloodmnist.tracking import Tracker, open_tracker
from bloodmnist.training.checkpoint import file_stamp
from bloodmnist.training.finish import compute_fields, skip_test, state_fields, test_once
from bloodmnist.training.model_setup import fit_model_to_data, prepare_model, wrap_ddp
from bloodmnist.training.rundir import (
    remove_stale_temps,
    setup_logging,
    write_history,
    write_manifest,
)
from bloodmnist.training.runlock import RunLock
from bloodmnist.training.signals import GracefulStop
from bloodmnist.training.stopping import fit_guarded
from bloodmnist.training.teacher import check_teacher_data
from bloodmnist.training.trainer import Trainer

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger("bloodmnist")


@dataclass(frozen=True)
class _Hooks:
    """What train_run's caller adds: see train_run."""

    on_epoch: Callable[[dict[str, Any]], None] | None
    reports: Callable[[Path], Any] | None
    again: str | None  # how to continue an interrupted run; None: this folder's train --resume


@dataclass
class ResumeFrom:
    """A loaded last.pt and the file stamp it had when its loading began."""

    state: dict[str, Any]
    stamp: tuple[int, int, int]


def train_run(
    cfg: Config,
    rt: Runtime,
    run_dir: Path,
    progress: bool = True,
    resume: ResumeFrom | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    reports: Callable[[Path], Any] | None = None,
    continue_with: str | None = None,
) -> dict[str, Any]:
    """Run the recipe into `run_dir` (already created) and return summary.json's content.

    With `resume`, training continues after last.pt's epoch with all its state. `on_epoch`
    gets each epoch's history row (a search prunes a trial by raising from it). `reports`
    builds the report files from the finished run folder (the CLI passes
    `reporting.build_reports`: training itself does not depend on reporting); it runs while the
    run still holds its lock, before the figures go to TensorBoard. `continue_with` is the
    advice an interrupted run ends with (default: this folder's `train --resume`; a search
    that never resumes its trials says how to continue the search instead).
    """
    lock = RunLock(run_dir) if rt.is_main else None
    # Rank 0 holds the lock for all ranks (only it writes); if it cannot, every rank stops.
    from_main(rt, partial(_lock_run, lock, run_dir, resume) if lock else lambda: None, share=False)
    try:
        setup_logging(run_dir if rt.is_main else None, verbose=rt.is_main)
        if lock and lock.took_over:
            log.warning(lock.took_over)
        for tmp in remove_stale_temps(run_dir) if lock else ():
            log.warning("removed %s, left by a save that was killed midway", tmp)
        # One handler for the whole run: a signal during setup stops before the first step, one
        # during the final evaluation lets it finish (a second signal exits at once).
        with GracefulStop() as stop:
            state = resume.state if resume else None
            hooks = _Hooks(on_epoch, reports, continue_with)
            return _train_locked(cfg, rt, run_dir, progress, state, stop, hooks)
    except OSError as exc:  # e.g. disk full while writing predictions or reports: one line
        raise OutputError.from_os(exc.filename or run_dir, exc) from None
    finally:
        if lock:
            lock.release()


def _lock_run(lock: RunLock, run_dir: Path, resume: ResumeFrom | None) -> None:
    """Take the folder's lock; on resume, also make sure last.pt is still the file that was
    loaded (it is read before the lock is taken, so another resume could have saved since)."""
    lock.acquire()
    last = run_dir / "checkpoints" / "last.pt"
    if resume is not None and (not last.is_file() or file_stamp(last) != resume.stamp):
        lock.release()
        raise BloodMNISTError(
            f"--resume: {last} was rewritten by another process while this one loaded it; "
            "run the same --resume command again to continue from the new one"
        )


def _train_locked(
    cfg: Config,
    rt: Runtime,
    run_dir: Path,
    progress: bool,
    resume: dict[str, Any] | None,
    stop: GracefulStop,
    hooks: _Hooks,
) -> dict[str, Any]:
    on_epoch, reports = hooks.on_epoch, hooks.reports
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    log.info("run folder: %s", run_dir)
    log.info("runtime: %s", rt.describe())
    progress = progress and rt.is_main
    cfg, data, data_info = _load_run_data(cfg, rt, progress)
    if resume is not None:
        _check_same_data(run_dir, data_info)
    trainer, model, pretrained = _build_trainer(cfg, rt, run_dir, data, data_info, resume, progress)
    base = _summary_base(cfg, rt, data_info, pretrained)
    tracker = open_tracker(run_dir, len(data.train), enabled=rt.is_main and cfg.runtime.tensorboard)
    trainer.on_epoch = partial(_epoch_hooks, tracker, on_epoch)
    try:
        state = fit_guarded(trainer, run_dir, rt, base, stop, hooks.again)
        stop.note = "finishing the final test evaluation and reports first"
        teachers = trainer.distill.teacher.models if trainer.distill is not None else []
        steps = len(trainer.batches) * state.epoch  # optimiser steps (each rank takes them all)
        work = compute_fields(model, teachers, cfg, len(data.train) * state.epoch, steps)
        fields = {**state_fields(state), **base, **work}
        if not cfg.eval.final_test:  # a search trial: validation only, the test split unseen
            return skip_test(run_dir, rt, fields, cfg)
        summary = test_once(model, data, cfg, rt, run_dir, fields, progress, reports)
        tracker.final(summary, run_dir / "figures")
        return summary
    finally:
        tracker.close()


def _load_run_data(cfg: Config, rt: Runtime, progress: bool) -> tuple[Config, Dataset, DataInfo]:
    """The run's data (rank 0 first: a download into the cache happens once, and its errors
    reach every rank) and the config fitted to it (size and class names come from the file)."""
    data, data_info = main_first(
        rt,
        lambda: load_data(
            cfg.data.path,
            cfg.data.size,
            cfg.model.num_classes,
            cfg.data.subset,
            progress,
            follow_file=True,
        ),
    )
    cfg = fit_config(cfg, data)
    if cfg.train.teacher:  # a teacher trained on another file could leak this run's test images
        check_teacher_data(
            cfg.train.teacher, data_info.md5, data, cfg.data.subset, cfg.data.train_on
        )
    if cfg.data.train_on == "train+val":
        data = data.with_val_in_train()
    log.info(
        "data: %s (MD5 %s) train/val/test = %d/%d/%d%s",
        data_info.path,
        data_info.md5,
        len(data.train),
        len(data.val),
        len(data.test),
        "; training on train + val: the validation numbers are not held out"
        if cfg.data.train_on == "train+val"
        else "",
    )
    return cfg, data, data_info


def _check_same_data(run_dir: Path, data_info: DataInfo) -> None:
    """A resumed run must train on the bytes it started with (manifest.json's MD5): another file
    at the same path would mix two datasets in one run, and its test split could hold images
    the first epochs trained on."""
    manifest = run_dir / "manifest.json"
    data = read_json(manifest).get("data") if manifest.is_file() else None
    first = data.get("md5") if isinstance(data, dict) else None
    if first and first != data_info.md5:
        raise BloodMNISTError(
            f"--resume: {data_info.path} has changed since {run_dir} started (MD5 "
            f"{data_info.md5}, the run trained on {first}); put the original file back, or start "
            "a new run with another --out"
        )


def _build_trainer(
    cfg: Config,
    rt: Runtime,
    run_dir: Path,
    data: Dataset,
    data_info: DataInfo,
    resume: dict[str, Any] | None,
    progress: bool,
) -> tuple[Trainer, nn.Module, dict[str, Any]]:
    """The model (new, or to be restored from last.pt), the manifest and config.yaml written by
    rank 0, and the Trainer, restored when resuming."""
    if resume is None:
        model, pretrained = main_first(rt, lambda: prepare_model(cfg, rt))
        fit_model_to_data(model, cfg, data.train.images)  # before the EMA copies the model
    else:  # weights come from last.pt; keep what the first start recorded
        model, pretrained = prepare_model(
            replace(cfg, model=replace(cfg.model, pretrained="none")), rt
        )
        pretrained = resume.get("pretrained", pretrained)
    facts = partial(_manifest_facts, _names(cfg), rt, data, data_info, pretrained)
    if rt.is_main and resume is None:  # a new run records itself before anything can fail
        write_manifest(run_dir, facts, resumed=False)
        save_yaml(cfg, run_dir / "config.yaml")
    trainer = Trainer(cfg, rt, run_dir, data, wrap_ddp(model, rt), pretrained, progress)
    if resume is not None:  # restored first: a last.pt that does not fit changes no file
        trainer.restore(resume)
        log.info(  # with select=last, "best" is every epoch's: the last one
            "resumed after epoch %d (%s val_acc %.4f at epoch %d)",
            trainer.state.epoch,
            cfg.train.select,
            trainer.state.best_val_acc,
            trainer.state.best_epoch,
        )
        if rt.is_main:
            write_manifest(run_dir, facts, resumed=True)
            save_yaml(cfg, run_dir / "config.yaml")  # --epochs/--device may have changed
            # last.pt is saved before history.csv: a kill between the two left the csv an
            # epoch short, and a resume with no epoch left to train never rewrote it
            write_history(run_dir / "history.csv", trainer.state.history)
    return trainer, model, pretrained


def _summary_base(
    cfg: Config, rt: Runtime, data_info: DataInfo, pretrained: dict[str, Any]
) -> dict[str, Any]:
    """The summary.json fields fixed before training starts."""
    return {
        "device": str(rt.device),
        "precision": rt.precision,
        "pretrained": "imagenet" if pretrained["used"] else "none",
        "trained_from_scratch": not pretrained["used"],
        "seed": cfg.train.seed,
        "train_on": cfg.data.train_on,
        "image_size": cfg.data.size,
        "class_names": list(cfg.model.names()),
        "data_md5": data_info.md5,
        "data_official": data_info.official,
        "world_size": rt.world_size,
    }


def _epoch_hooks(
    tracker: Tracker, on_epoch: Callable[[dict[str, Any]], None] | None, row: dict[str, Any]
) -> None:
    tracker.epoch(row)
    if on_epoch is not None:
        on_epoch(row)


def _manifest_facts(
    class_names: tuple[str, ...],
    rt: Runtime,
    data: Dataset,
    data_info: DataInfo,
    pretrained: dict[str, Any],
) -> dict[str, Any]:
    """What manifest.json records about this run beyond versions: data, device, pretrained."""
    return {
        "data": {**data_info.as_dict(), **describe(data, class_names)},
        "runtime": rt.describe(),
        "device": str(rt.device),
        "precision": rt.precision,
        "world_size": rt.world_size,
        "host": host_info(rt),
        "pretrained": pretrained,
    }


def _names(cfg: Config) -> tuple[str, ...]:
    return cfg.model.names()
