"""The Optuna study behind `bloodmnist tune`: storage, sampler, pruner, workers, resume.

Every worker is its own Optuna client on one storage (SQLite file by default, PostgreSQL or any
database URL Optuna accepts for several machines), so J workers on one machine and workers on
several machines are the same thing. Only COMPLETE and PRUNED trials count toward --trials.
A trial left RUNNING by a dead worker is marked FAIL: at once when the worker ran on this host
(its pid is gone), else by Optuna's heartbeat once it is older than the grace period.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import os
import random
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna

from bloodmnist.atomic import read_json, write_text_atomic
from bloodmnist.errors import BloodMNISTError
from bloodmnist.tuning.objective import (
    DONE,
    PROGRESS_STEPS,
    BaseSpec,
    process_identity,
    trial_dir,
)
from bloodmnist.tuning.space import Space

PLAN_FILE = "tune_plan.json"
LOGS_DIR = "logs"
#: Heartbeat of a running trial; a trial silent for GRACE_S is failed by the other workers.
HEARTBEAT_S = 10
GRACE_S = 60
POLL_S = 2.0  # how often a worker waiting for others' last trials looks again
RUNNING = optuna.trial.TrialState.RUNNING
FAIL = optuna.trial.TrialState.FAIL


@dataclass
class TunePlan:
    """What `tune` was asked for; saved in DIR so workers and a rerun read the same."""

    space_file: str
    space: dict[str, Any]
    base: dict[str, Any]  # BaseSpec as a dict
    n_trials: int
    jobs: int
    threads: int
    storage: str
    study_name: str
    cwd: str = field(default_factory=os.getcwd)
    created: str = field(default_factory=lambda: dt.datetime.now().isoformat(timespec="seconds"))

    def save(self, tune_dir: Path) -> None:
        write_text_atomic(tune_dir / PLAN_FILE, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, tune_dir: Path) -> TunePlan:
        path = tune_dir / PLAN_FILE
        if not path.is_file():
            raise BloodMNISTError(f"{tune_dir} has no {PLAN_FILE}; is it a tune folder?")
        try:
            plan = cls(**read_json(path))
            BaseSpec(**plan.base)  # the fixed options' keys too: every reader builds one
        except TypeError:
            raise BloodMNISTError(f"{path} does not match this version's tune plan") from None
        return plan


def default_storage(tune_dir: Path) -> str:
    return f"sqlite:///{tune_dir.resolve() / 'study.db'}"


RACE_MESSAGES = ("already exists", "duplicate key", "UNIQUE constraint failed")


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's database storage with heartbeats; a bad URL or server is one error line."""
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):  # several processes on one file: wait for the lock
        kwargs = {"connect_args": {"timeout": 120}}
    attempts = 5
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S
                )
        except Exception as exc:  # sqlalchemy's URL, driver and connection errors alike
            # Workers starting together on a fresh database race to create Optuna's tables and
            # its schema-version row; the loser's error says they now exist (PostgreSQL: "already
            # exists"/"duplicate key"; SQLite: "UNIQUE constraint failed"), so a retry finds them.
            racing = any(s in str(exc) for s in RACE_MESSAGES)
            if racing and attempt < attempts - 1:
                time.sleep(1 + random.random())
                continue
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            raise BloodMNISTError(f"--storage {safe_url(url)}: cannot open it ({first})") from None
    raise AssertionError("unreachable")


def safe_url(url: str) -> str:
    """The storage URL without its password, for messages (SQLAlchemy's own URL parser, so a
    password containing '@' or ':' is hidden whole)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL: show only its scheme
        return url.split("://", 1)[0] + "://***"


def _build_sampler(spec: dict[str, Any], seed: int | None) -> optuna.samplers.BaseSampler:
    if spec["kind"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = int(spec.get("startup_trials", 4))
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=startup)


def make_sampler(spec: dict[str, Any]) -> optuna.samplers.BaseSampler:
    """TPE (constant liar: parallel workers do not all try the same point) or random; with a
    seed in the space each trial's draws are seeded by (seed, trial number) (TrialSeeded)."""
    seed = spec.get("seed")
    build = functools.partial(_build_sampler, dict(spec))  # module-level: the sampler pickles
    return build(None) if seed is None else TrialSeeded(build, int(seed))


class TrialSeeded(optuna.samplers.BaseSampler):
    """A sampler made afresh for each trial, seeded by (seed, trial number). Trial numbers are
    unique in a study's storage, so workers, machines and a continued search never repeat each
    other's draws (one seed per worker did: a continued search drew its first trials again).
    One inner sampler per running trial, so threads sharing the study do not mix them."""

    def __init__(self, build: Callable[[int | None], optuna.samplers.BaseSampler], seed: int):
        self._build, self._seed = build, seed
        self._inner: dict[int, optuna.samplers.BaseSampler] = {}
        self._fallback = build(seed)  # for calls outside a trial (Optuna's own checks)

    def _for(self, trial: Any) -> optuna.samplers.BaseSampler:
        return self._inner.get(trial.number, self._fallback)

    def before_trial(self, study: optuna.Study, trial: Any) -> None:
        inner = self._build((self._seed * 1_000_003 + trial.number) % 2**32)
        self._inner[trial.number] = inner
        inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: Any) -> dict[str, Any]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: Any, space: dict) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, space)

    def sample_independent(self, study: optuna.Study, trial: Any, name: str, dist: Any) -> Any:
        return self._for(trial).sample_independent(study, trial, name, dist)

    def after_trial(self, study: optuna.Study, trial: Any, state: Any, values: Any) -> None:
        self._inner.pop(trial.number, self._fallback).after_trial(study, trial, state, values)


def make_pruner(spec: dict[str, Any]) -> optuna.pruners.BasePruner:
    """Median or Hyperband on the validation accuracy reported per epoch (or, median with
    `by: progress`, per twentieth of each trial's schedule); `none` never prunes."""
    if spec["kind"] == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=int(spec.get("min_epochs", 1)),
            reduction_factor=int(spec.get("reduction_factor", 3)),
        )
    if spec["kind"] == "median":
        warmup = int(spec.get("warmup_epochs", 0))
        if spec.get("by") == "progress":  # steps are PROGRESS_STEPS-ths of each trial's run
            warmup = math.ceil(int(spec.get("warmup_percent", 0)) * PROGRESS_STEPS / 100)
        return optuna.pruners.MedianPruner(
            n_startup_trials=int(spec.get("startup_trials", 2)), n_warmup_steps=warmup
        )
    return optuna.pruners.NopPruner()


def open_study(plan: TunePlan, space: Space) -> optuna.Study:
    """Create or join the plan's study; a study made for another space is refused."""
    study = optuna.create_study(
        storage=open_storage(plan.storage),
        study_name=plan.study_name,
        direction="maximize",
        load_if_exists=True,
        sampler=make_sampler(space.sampler),
        pruner=make_pruner(space.pruner),
    )
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise BloodMNISTError(f"study '{plan.study_name}' minimises; it is not a tune study")
    known = study.user_attrs.get("space")
    if known is None:
        study.set_user_attr("space", plan.space)
    elif known != plan.space:
        raise BloodMNISTError(
            f"study '{plan.study_name}' in {safe_url(plan.storage)} searches another space than "
            f"{plan.space_file}; use another --study-name (or the same space file)"
        )
    return study


def counts(study: optuna.Study) -> tuple[int, int]:
    """(trials that count: COMPLETE + PRUNED, trials RUNNING now)."""
    trials = study.get_trials(deepcopy=False)
    return sum(t.state in DONE for t in trials), sum(t.state == RUNNING for t in trials)


def _alive(attrs: dict[str, Any]) -> bool:
    """Whether the process that ran a trial on this host is still that process."""
    from bloodmnist.tuning.objective import pid_stamp

    pid = attrs.get("pid")
    return isinstance(pid, int) and pid_stamp(pid)["pid_start"] == attrs.get("pid_start")


def fail_orphans(study: optuna.Study, tune_dir: Path | None = None) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker on this host is gone (killed tune); Optuna's
    heartbeat does the same for other hosts after GRACE_S. Returns the trial numbers."""
    me = process_identity()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(RUNNING,)):
        a = t.user_attrs
        if a.get("host") != me["host"] or a.get("boot_id") != me["boot_id"] or _alive(a):
            continue
        try:
            study._storage.set_trial_user_attr(t._trial_id, "note", "its worker was killed")
            study._storage.set_trial_state_values(t._trial_id, FAIL)
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker got there first
        failed.append(t.number)
        _mark_folder(tune_dir, t.number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return failed


def _mark_folder(tune_dir: Path | None, number: int) -> None:
    """A killed trial's run folder says so (it has no summary.json of its own); with seeds per
    trial, the seed-S/ folders under it are the run folders."""
    from bloodmnist.training.rundir import write_json

    root = trial_dir(tune_dir, number) if tune_dir else None
    if root is None or not root.is_dir():
        return
    runs = sorted(p for p in root.glob("seed-*") if p.is_dir()) or [root]
    msg = "its tune worker was killed; the study marked the trial FAIL and runs another"
    for run_dir in runs:
        if not (run_dir / "summary.json").exists():
            write_json(run_dir / "summary.json", {"status": "failed", "message": msg})


def worker_loop(study: optuna.Study, objective: Any, setup: Any, deadline: float | None) -> int:
    """Run trials until the study has its count (or the deadline); returns trials run here."""
    ran = 0
    while deadline is None or time.time() < deadline:
        fail_orphans(study, setup.tune_dir)
        done, running = counts(study)
        if done >= setup.n_trials:
            break
        if done + running >= setup.n_trials:  # the last places are taken: wait, they may fail
            time.sleep(POLL_S)
            continue
        from bloodmnist.tuning.objective import SurplusTrial

        study.optimize(
            lambda trial: objective(trial, setup),
            n_trials=1,
            catch=(SurplusTrial,),
            gc_after_trial=True,
        )
        ran += 1
    return ran


def host_label() -> str:
    return socket.gethostname()
