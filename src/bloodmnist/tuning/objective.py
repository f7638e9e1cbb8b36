"""One search trial: an ordinary run folder under DIR/trials/, scored on validation only.

`objective(trial, setup)` is Optuna's objective in its examples' shape: suggest, train, report
each epoch for pruning, return the best validation accuracy. The test split is never evaluated
(eval.final_test=false) and no reports are built (runtime.reports=false).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from bloodmnist.atomic import read_json
from bloodmnist.config import DEFAULT_RECIPE, Config, build_config, validate
from bloodmnist.config.resolve import _merge, nest
from bloodmnist.errors import BloodMNISTError, TrainingStopped
from bloodmnist.tuning.space import RECIPE_KEY, Space

TRIALS_DIR = "trials"
#: With `pruner.by: progress`, epochs are reported on a grid of this many equal shares of each
#: trial's own schedule (step k = k/20 done), so trials of any length meet at the same steps.
PROGRESS_STEPS = 20
# What an interrupted trial's training advises: a search never resumes a trial's folder
CONTINUE = (
    "run the same tune command to continue the search (this trial is marked FAIL; "
    "another takes its place)"
)
#: Trial states that count toward --trials; FAIL (crashed, stale, surplus) never does.
DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


class SurplusTrial(BloodMNISTError):
    """Another worker's trial already fills the study's last place; this one does not run."""


@dataclass
class BaseSpec:
    """The fixed train options of every trial (what `train_config` would read from the CLI)."""

    config: str | None = None
    recipe: str = DEFAULT_RECIPE
    flags: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)

    def build(self, recipe: str | None = None) -> Config:
        return build_config(self.config, self.flags, self.overrides, recipe=recipe or self.recipe)


@dataclass
class TrialSetup:
    """What a worker needs to run trials: folder, fixed options, space, target count."""

    tune_dir: Path
    base: BaseSpec
    space: Space
    n_trials: int
    threads: int = 0  # torch threads per trial; 0 keeps the fixed options' runtime.threads
    rt: Any = None  # the worker's Runtime (device, precision, threads), made once


def trial_dir(tune_dir: Path, number: int) -> Path:
    return tune_dir / TRIALS_DIR / f"trial-{number:04d}"


def apply_params(base: BaseSpec, params: dict[str, Any]) -> Config:
    """The fixed options with a trial's values on top (a `recipe` choice swaps the base)."""
    cfg = base.build(params.get(RECIPE_KEY))
    _merge(cfg, nest({k: v for k, v in params.items() if k != RECIPE_KEY}))
    validate(cfg)
    return cfg


def trial_config(setup: TrialSetup, params: dict[str, Any], number: int) -> Config:
    """A trial's config: validation only (the test split stays unseen), no reports."""
    cfg = apply_params(setup.base, params)
    cfg.eval.final_test = False
    cfg.runtime.reports = False
    cfg.runtime.name = f"trial-{number:04d}"
    if setup.threads:
        cfg.runtime.threads = setup.threads
    return cfg


def process_identity() -> dict[str, Any]:
    """Who runs a trial: host, boot and pid with its start time (pids are reused)."""
    return {"host": socket.gethostname(), "boot_id": _boot_id(), **pid_stamp(os.getpid())}


def pid_stamp(pid: int) -> dict[str, Any]:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        start = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: start time in clock ticks
    except (OSError, ValueError, IndexError):
        start = None
    return {"pid": pid, "pid_start": start}


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def admit(trial: optuna.Trial, n_trials: int) -> None:
    """Run this trial only if the finished trials plus the running ones created before it leave
    room; two workers asking for the last place at once cannot both take it (numbers order them)."""
    trials = trial.study.get_trials(deepcopy=False)
    done = sum(t.state in DONE for t in trials)
    earlier = sum(
        t.state == optuna.trial.TrialState.RUNNING and t.number < trial.number for t in trials
    )
    if done + earlier >= n_trials:
        trial.set_user_attr("note", "surplus: the study already had its trials; not run")
        raise SurplusTrial(f"trial {trial.number} not needed ({done} done, {earlier} running)")


def objective(trial: optuna.Trial, setup: TrialSetup) -> float:
    """Train one trial (once per seed of the space, if it names seeds) and return its best
    validation accuracy, the mean over seeds (0 if a seed diverged)."""
    from bloodmnist.training.rundir import new_run_dir

    for key, value in process_identity().items():
        trial.set_user_attr(key, value)
    admit(trial, setup.n_trials)
    params = setup.space.suggest(trial)
    root = trial_dir(setup.tune_dir, trial.number)
    trial.set_user_attr("run_dir", str(root.relative_to(setup.tune_dir)))
    seeds: list[int | None] = list(setup.space.seeds) or [None]
    scores: dict[str, float] = {}
    epochs = 0
    for i, seed in enumerate(seeds):
        cfg = trial_config(setup, params, trial.number)
        folder = root
        if seed is not None:
            cfg.train.seed = seed
            cfg.runtime.name = f"{cfg.runtime.name}-seed{seed}"
            folder = root / f"seed-{seed}"
        run_dir = new_run_dir(folder, "", explicit=True)
        score, ran = _train_one(trial, cfg, setup, run_dir, epochs, prune=_prune_plan(i, seeds))
        epochs += ran
        trial.set_user_attr("epochs_run", epochs)
        if score is None:
            note = "diverged" if seed is None else f"diverged (seed {seed})"
            trial.set_user_attr("note", note)
            return 0.0
        if seed is not None:
            scores[str(seed)] = score
            trial.set_user_attr("seed_val_acc", scores)
    return sum(scores.values()) / len(scores) if scores else score


def _train_one(
    trial: optuna.Trial,
    cfg: Config,
    setup: TrialSetup,
    run_dir: Path,
    before: int,
    prune: tuple[bool, bool],
) -> tuple[float | None, int]:
    """One training of a trial: (best validation accuracy or None if it diverged, epochs run).
    `before` epochs were run by its earlier seeds (for the trial's epochs_run when pruned);
    `prune` is (report to the pruner, may prune after the last epoch too)."""
    from bloodmnist.training.run import train_run
    from bloodmnist.training.rundir import write_json

    seen: dict[str, Any] = {"best_val_acc": -1.0, "best_epoch": 0, "epochs_run": 0, "step": 0}
    by_progress = setup.space.pruner.get("by") == "progress"

    def report(row: dict[str, Any]) -> None:
        epoch, acc = int(row["epoch"]), float(row["val_acc"])
        seen["epochs_run"] = epoch
        if acc > seen["best_val_acc"]:
            seen.update(best_val_acc=acc, best_epoch=epoch)
        step = epoch * PROGRESS_STEPS // cfg.train.epochs if by_progress else epoch
        if not prune[0] or step <= seen["step"]:  # (progress: this epoch reached no new step)
            return
        seen["step"] = step
        trial.report(acc, step)
        # after the last epoch a prune saves nothing unless other seeds are still to run
        if (not _last_epoch(cfg, epoch, seen["best_epoch"]) or prune[1]) and trial.should_prune():
            raise optuna.TrialPruned(f"trial {trial.number} pruned after epoch {epoch}")

    try:
        summary = train_run(
            cfg, setup.rt, run_dir, progress=False, on_epoch=report, continue_with=CONTINUE
        )
    except optuna.TrialPruned:
        trial.set_user_attr("epochs_run", before + seen["epochs_run"])
        # every epoch's best, not only those reported (progress steps skip some); with seeds,
        # the first seed's alone: trials.csv says so
        trial.set_user_attr("best_val_acc", seen["best_val_acc"])
        if setup.space.seeds:
            trial.set_user_attr("note", f"pruned during seed {cfg.train.seed} (its value alone)")
        seen.pop("step")
        write_json(run_dir / "summary.json", {"status": "pruned", "trial": trial.number, **seen})
        raise
    except TrainingStopped:
        if _status(run_dir) == "diverged":  # a bad learning rate is a result, not a crash:
            # the worst accuracy (Optuna would mark NaN FAIL, uncounted, and TPE would learn
            # nothing about the region)
            return None, seen["epochs_run"]
        trial.set_user_attr("epochs_run", before + seen["epochs_run"])
        trial.set_user_attr("note", "interrupted (marked FAIL; the study runs another)")
        raise
    return float(summary["best_val_acc"]), int(summary["epochs_run"])


def _last_epoch(cfg: Config, epoch: int, best_epoch: int) -> bool:
    """Whether the training ends after `epoch`: its last, or early stopping's (the trainer's
    rule: no strictly better validation accuracy for `early_stop_patience` epochs)."""
    stops = cfg.train.select == "best" and epoch - best_epoch >= cfg.train.early_stop_patience
    return epoch >= cfg.train.epochs or stops


def _prune_plan(i: int, seeds: list[int | None]) -> tuple[bool, bool]:
    """Pruning watches the first seed: a trial that is clearly worse stops early, and the
    median compares like with like (every trial's first seed, step by step)."""
    return i == 0, len(seeds) > 1


def _status(run_dir: Path) -> str | None:
    path = run_dir / "summary.json"
    return read_json(path).get("status") if path.is_file() else None
