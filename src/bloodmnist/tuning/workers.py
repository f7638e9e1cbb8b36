"""Worker processes of `bloodmnist tune`: J per machine, each an Optuna client on the storage.

The parent starts `python -m bloodmnist.tuning.workers DIR INDEX DEADLINE` J times and waits.
A worker dies with its parent (SIGTERM via PR_SET_PDEATHSIG: its running trial stops after the
current step and is marked FAIL), so killing `tune`, even with SIGKILL, leaves no orphans.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bloodmnist.errors import BloodMNISTError, TrainingStopped
from bloodmnist.tuning.study import LOGS_DIR

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec (Linux only)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def launch(tune_dir: Path, index: int, deadline: float | None, cwd: str) -> subprocess.Popen:
    log = tune_dir / LOGS_DIR / f"worker-{index}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "bloodmnist.tuning.workers", str(tune_dir), str(index)]
    cmd.append(str(deadline or 0))
    with log.open("a", encoding="utf-8") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        # Own session: a terminal's Ctrl-C reaches the parent alone, which forwards it once.
        return subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )


def run_workers(
    tune_dir: Path, jobs: int, deadline: float | None, cwd: str, echo: Callable[[str], None]
) -> dict[int, int]:
    """Start `jobs` workers and wait for all; returns worker index -> exit code. SIGINT/SIGTERM
    are forwarded once (each worker stops after its current step and exits)."""
    procs = {i: launch(tune_dir, i, deadline, cwd) for i in range(jobs)}
    echo(f"{jobs} worker(s) started; logs in {tune_dir / LOGS_DIR}/")

    def forward(signum: int, frame: object) -> None:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        raise TrainingStopped(
            f"interrupted by {signal.Signals(signum).name}; the workers stopped after their "
            "current step (their trials are marked FAIL). Run the same command to continue",
            128 + signum,
        )

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while any(p.poll() is None for p in procs.values()):
            time.sleep(0.3)
    except TrainingStopped:
        for p in procs.values():
            p.wait()
        raise
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return {i: p.returncode for i, p in procs.items()}


def _not_a_stop(record: logging.LogRecord) -> bool:
    return not (record.exc_info and isinstance(record.exc_info[1], TrainingStopped))


def worker_main(tune_dir: Path, index: int, deadline: float | None, study: Any = None) -> int:
    """One worker: join the study (or use `study`) and run trials until it has its count."""
    import optuna

    from bloodmnist.runtime import setup_runtime
    from bloodmnist.tuning.objective import BaseSpec, TrialSetup, objective
    from bloodmnist.tuning.space import parse_space
    from bloodmnist.tuning.study import TunePlan, open_study, worker_loop

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # a trial stopped by a signal is no crash: no "Trial N failed" traceback for it
    logging.getLogger("optuna.study._optimize").addFilter(_not_a_stop)
    plan = TunePlan.load(tune_dir)
    base = BaseSpec(**plan.base)
    cfg = base.build()
    space = parse_space(plan.space, cfg)
    threads = plan.threads or cfg.runtime.threads
    rt = setup_runtime(cfg.runtime.device, cfg.runtime.precision, threads)
    setup = TrialSetup(tune_dir, base, space, plan.n_trials, plan.threads, rt)
    study = study or open_study(plan, space)
    ran = worker_loop(study, objective, setup, deadline)
    print(f"worker {index}: ran {ran} trial(s)", file=sys.stderr, flush=True)
    return 0


def main(argv: list[str]) -> int:
    tune_dir, index, deadline = Path(argv[0]), int(argv[1]), float(argv[2]) or None
    try:
        return worker_main(tune_dir, index, deadline)
    except BloodMNISTError as exc:
        print(f"worker {index}: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
