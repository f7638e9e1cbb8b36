"""`bloodmnist study`: one training per seed (J at a time), then aggregate the seed runs.

Each seed is a real `python -m bloodmnist train ... --seed S --out STUDY/seed-S` subprocess, so a
seed run is an ordinary run folder (resumable, reportable, comparable) and a crash in one seed
does not take the others down. With J jobs on C cores every job gets C // J torch threads.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bloodmnist.atomic import read_json, write_text_atomic
from bloodmnist.errors import BloodMNISTError, TrainingStopped

PLAN_FILE = "study_plan.json"
LOGS_DIR = "logs"
#: Train options the study sets itself for every seed.
RESERVED_OPTIONS = ("--seed", "--out", "--resume")


@dataclass
class StudyPlan:
    seeds: list[int]
    train_args: list[str]  # forwarded verbatim to `bloodmnist train`
    jobs: int
    threads: int  # torch threads per job (0: the user chose runtime.threads themselves)
    cwd: str = field(default_factory=os.getcwd)  # relative --data/--config paths resolve here
    adopted: dict[str, str] = field(default_factory=dict)  # seed -> run folder (--adopt)
    created: str = field(default_factory=lambda: dt.datetime.now().isoformat(timespec="seconds"))

    def save(self, study_dir: Path) -> None:
        write_text_atomic(study_dir / PLAN_FILE, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, study_dir: Path) -> StudyPlan:
        path = study_dir / PLAN_FILE
        if not path.is_file():
            raise BloodMNISTError(f"{study_dir} has no {PLAN_FILE}; is it a study folder?")
        try:
            return cls(**read_json(path))
        except TypeError:
            raise BloodMNISTError(
                f"{path} does not match this version's study plan; start a new study"
            ) from None


def parse_seeds(text: str) -> list[int]:
    """'42,43,44' -> [42, 43, 44]; one clear error for anything else."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise BloodMNISTError(f"--seeds expects integers like 42,43,44, got {text!r}") from None
    if not seeds:
        raise BloodMNISTError("--seeds needs at least one seed, e.g. --seeds 42,43,44")
    if len(set(seeds)) != len(seeds):
        raise BloodMNISTError(f"--seeds has a repeated seed: {text!r}")
    return seeds


def split_cores(n_seeds: int, jobs: int, cores: int) -> tuple[int, int]:
    """(parallel jobs, threads per job) with jobs x threads <= cores and at least 1 thread."""
    if jobs < 1:
        raise BloodMNISTError(f"--jobs must be >= 1, got {jobs}")
    j = max(1, min(jobs, n_seeds, cores))
    return j, max(1, cores // j)


def _overrides(train_args: list[str]) -> list[str]:
    """The `key=value` texts among the forwarded options, `--set=key=value` form included."""
    texts = (a.split("=", 1)[1] if a.startswith("--set=") else a for a in train_args)
    return [t.replace(" ", "") for t in texts]


def check_train_args(train_args: list[str]) -> None:
    """The study owns --seed/--out/--resume and train.seed; everything else goes to train.
    (The parsers refuse abbreviations, so `--se`/`--res` cannot slip past this check.)"""
    for arg in train_args:
        opt = arg.split("=", 1)[0]
        if opt in RESERVED_OPTIONS:
            raise BloodMNISTError(
                f"study sets {opt} for each seed itself; drop {opt} (use --seeds)"
            )
    if any(t.startswith("train.seed=") for t in _overrides(train_args)):
        raise BloodMNISTError("study sets train.seed for each seed; use --seeds instead")


def _user_sets_threads(train_args: list[str]) -> bool:
    return any(t.startswith("runtime.threads=") for t in _overrides(train_args))


def seed_dir(study_dir: Path, seed: int) -> Path:
    return study_dir / f"seed-{seed}"


def seed_state(run_dir: Path) -> str:
    """'completed' | 'diverged' | 'resumable' (has last.pt) | 'new' (absent/empty) |
    'unstarted' (the study's own folder, stopped before an epoch ended) | 'broken'."""
    summary = run_dir / "summary.json"
    status = None
    if summary.is_file():
        try:
            status = json.loads(summary.read_text()).get("status")
        except ValueError:
            status = None
        if status in ("completed", "diverged"):  # resuming a diverged run diverges again
            return status
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return "resumable"
    if status == "interrupted" and not run_dir.is_symlink():  # an adopted run is not ours
        return "unstarted"
    if not run_dir.exists() or all(p.name == "run.lock" for p in run_dir.iterdir()):
        return "new"  # what `train --out` accepts (a stale lock is taken over)
    return "broken"


def _set_aside(study_dir: Path, seed: int, echo: Callable[[str], None]) -> None:
    """A seed stopped before its first epoch ended has nothing to resume: its folder (logs and
    config only) is moved into logs/, not deleted, and the seed starts again."""
    run_dir = seed_dir(study_dir, seed)
    (study_dir / LOGS_DIR).mkdir(exist_ok=True)
    n = 1
    while (dest := study_dir / LOGS_DIR / f"seed-{seed}.stopped-before-epoch-1.{n}").exists():
        n += 1
    run_dir.rename(dest)
    echo(f"seed {seed}: stopped before its first epoch ended; folder moved to {dest}")


def seed_command(plan: StudyPlan, study_dir: Path, seed: int, state: str) -> list[str]:
    """The `python -m bloodmnist train` argv for one seed (resume continues its saved config)."""
    run_dir = seed_dir(study_dir, seed)
    base = [sys.executable, "-m", "bloodmnist", "train"]
    if state == "resumable":
        return [*base, "--resume", str(run_dir), "--quiet"]
    cmd = [*base, *plan.train_args, "--seed", str(seed), "--out", str(run_dir)]
    if plan.threads:
        cmd += ["--set", f"runtime.threads={plan.threads}"]
    return cmd if "--quiet" in cmd else [*cmd, "--quiet"]


def _launch(cmd: list[str], log_path: Path, cwd: str) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as fh:  # the child keeps its own copy of the fd
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        # Own session: a terminal's Ctrl-C goes to the study alone, which forwards it once;
        # otherwise each seed would get it twice and take the second as "exit at once".
        return subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
        )


def _stop_all(running: dict[int, subprocess.Popen], signum: int = signal.SIGINT) -> None:
    """Forward an interrupt: each seed saves its state and exits resumable. A second signal
    while waiting is forwarded too, so the seeds exit at once, as `train` does on its own."""
    pending = [p for p in running.values() if p.poll() is None]
    while pending:
        for proc in pending:
            proc.send_signal(signum)
        try:
            for proc in pending:
                proc.wait()
        except (KeyboardInterrupt, TrainingStopped):
            pass
        pending = [p for p in pending if p.poll() is None]


def _raise_on_sigterm(study_dir: Path) -> Callable[[int, object], None]:
    """A SIGTERM handler for the study process. Without it SIGTERM would kill the study alone
    and leave its seeds training as orphans; this turns it into an error that forwards the
    signal to them (in `run_seeds`) and says how to resume."""

    def handler(signum: int, frame: object) -> None:
        raise TrainingStopped(
            "interrupted by SIGTERM; the running seeds stopped after their current step. "
            f"Continue with: bloodmnist study --resume {study_dir}",
            128 + signum,
        )

    return handler


def run_seeds(
    study_dir: Path, plan: StudyPlan, echo: Callable[[str], None] = print
) -> dict[int, str]:
    """Train every seed that is not completed yet; returns seed -> final state/exit summary."""
    if not Path(plan.cwd).is_dir():
        raise BloodMNISTError(f"the study's working folder {plan.cwd} is gone; its paths need it")
    todo = []
    outcome: dict[int, str] = {}
    for seed in plan.seeds:
        state = seed_state(seed_dir(study_dir, seed))
        if state == "completed":
            outcome[seed] = "completed"
        elif state == "diverged":
            outcome[seed] = "failed: training diverged (see its summary.json); lower optim.lr"
        elif state == "broken":
            outcome[seed] = (
                "failed: its folder has no checkpoints/last.pt to resume from; "
                "move the folder away and run study --resume again"
            )
        else:
            if state == "unstarted":
                _set_aside(study_dir, seed, echo)
            todo.append((seed, state))
    running: dict[int, subprocess.Popen] = {}
    previous = None
    if threading.current_thread() is threading.main_thread():  # signal() works only there
        previous = signal.signal(signal.SIGTERM, _raise_on_sigterm(study_dir))
    try:
        while todo or running:
            while todo and len(running) < plan.jobs:
                seed, state = todo.pop(0)
                log_path = study_dir / LOGS_DIR / f"seed-{seed}.log"
                echo(f"seed {seed}: {'resuming' if state == 'resumable' else 'training'}")
                cmd = seed_command(plan, study_dir, seed, state)
                running[seed] = _launch(cmd, log_path, plan.cwd)
            for seed, proc in list(running.items()):
                if proc.poll() is not None:
                    del running[seed]
                    rc = proc.returncode
                    outcome[seed] = "completed" if rc == 0 else f"failed: exit code {rc}"
                    echo(f"seed {seed}: {outcome[seed]} (log {LOGS_DIR}/seed-{seed}.log)")
            time.sleep(0.2)
    except BaseException as exc:
        stopped_by_term = isinstance(exc, TrainingStopped)
        _stop_all(running, signal.SIGTERM if stopped_by_term else signal.SIGINT)
        if isinstance(exc, KeyboardInterrupt):
            raise TrainingStopped(
                "interrupted (Ctrl-C); the running seeds stopped after their current step. "
                f"Continue with: bloodmnist study --resume {study_dir}",
                130,
            ) from None
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return outcome


def prepare_study_dir(out: str | None, resume: bool) -> Path:
    """A new empty study folder (default runs/<time>-study), or an existing one for --resume."""
    path = Path(out) if out else Path("runs") / f"{dt.datetime.now():%Y%m%d-%H%M%S}-study"
    path = path.expanduser().resolve()  # seeds run with the plan's cwd, not necessarily ours
    if resume:
        if not path.is_dir():
            raise BloodMNISTError(f"--resume: study folder {path} does not exist")
        return path
    if path.exists() and any(path.iterdir()):
        raise BloodMNISTError(
            f"study folder {path} is not empty; pick a new --out, or continue it with --resume"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def new_plan(seeds: list[int], train_args: list[str], jobs: int) -> StudyPlan:
    check_train_args(train_args)
    j, threads = split_cores(len(seeds), jobs, len(os.sched_getaffinity(0)))
    return StudyPlan(seeds, list(train_args), j, 0 if _user_sets_threads(train_args) else threads)


def failures(outcome: dict[int, str]) -> dict[int, str]:
    """Seeds that did not complete, in seed order (not the order they stopped in)."""
    return {s: o for s, o in sorted(outcome.items()) if o != "completed"}


def study_record(plan: StudyPlan, outcome: dict[int, str]) -> dict[str, Any]:
    """Plan and outcome for study.json: what was asked for and what finished."""
    return {
        "plan": asdict(plan),
        "failed": [
            {"seed": s, "reason": r, "log": f"{LOGS_DIR}/seed-{s}.log"}
            for s, r in failures(outcome).items()
        ],
    }
