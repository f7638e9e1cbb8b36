"""Helpers for tests/test_faults.py: real `bloodmnist` subprocesses, polling, one-line errors."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "bloodmnist_pbc_28.npz"

# A short real training: 64 images per split, 2 steps of 32 per epoch, no TTA, no downloads.
# One thread: on a loaded 2-core machine two OpenMP threads spin-wait for each other (measured
# 4x slower wall time), and every run compared bit for bit must use the same thread count.
TRAIN = [
    "train",
    "--recipe",
    "reference",
    "--data",
    str(DATA),
    "--subset",
    "64",
    "--epochs",
    "3",
    "--seed",
    "42",
    "--pretrained",
    "none",
    "--device",
    "cpu",  # test_faults.py times its signals and its second process for CPU speed
    "--quiet",
    "--set",
    "eval.tta=false",
    "--set",
    "optim.batch_size=32",
    "--set",
    "runtime.threads=1",
    "--set",
    "runtime.reports=false",  # no fault test reads the reports; saves ~7 s per finished run
]
# Metrics of summary.json that an interrupted-and-resumed run must reproduce exactly.
SUMMARY_KEYS = (
    "status",
    "test_acc",
    "test_macro_f1",
    "test_auc",
    "test_n",
    "test",
    "best_val_acc",
    "best_epoch",
    "epochs_run",
    "stopped_early",
)

needs_data = pytest.mark.skipif(not DATA.is_file(), reason=f"shared test data not found: {DATA}")


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "bloodmnist", *args]


def cli(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Run `bloodmnist ARGS` to completion, capturing text output."""
    return subprocess.run(
        command(*args), capture_output=True, text=True, timeout=timeout, cwd=REPO, **kw
    )


def start(log_dir: Path, *args: str) -> subprocess.Popen:
    """Start `bloodmnist ARGS` in the background; stdout/stderr go to files we can poll."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out = open(log_dir / "stdout.txt", "w")  # noqa: SIM115 - closed by the child's exit
    err = open(log_dir / "stderr.txt", "w")  # noqa: SIM115
    proc = subprocess.Popen(command(*args), stdout=out, stderr=err, cwd=REPO)
    out.close()
    err.close()
    proc.log_dir = log_dir  # type: ignore[attr-defined]
    return proc


def stderr_of(proc: subprocess.Popen) -> str:
    return (proc.log_dir / "stderr.txt").read_text()  # type: ignore[attr-defined]


def wait_for(
    what: str, ready: Callable[[], bool], proc: subprocess.Popen, timeout: float = 300
) -> None:
    """Poll until `ready()`; fail early (with the child's stderr) if the child exits first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"process exited ({proc.returncode}) before {what}:\n{stderr_of(proc)}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait(30)
            pytest.fail(f"timed out waiting for {what}:\n{stderr_of(proc)}")
        time.sleep(0.1)


def training_started(proc: subprocess.Popen) -> Callable[[], bool]:
    """True once the signal handlers are installed (the 'training epochs' log line)."""
    return lambda: "training epochs" in stderr_of(proc)


def epoch_done(run_dir: Path, epoch: int) -> Callable[[], bool]:
    """True once history.csv (written after last.pt) lists `epoch`."""

    def ready() -> bool:
        try:
            return len(read_history(run_dir)) >= epoch
        except (OSError, ValueError):
            return False

    return ready


def read_history(run_dir: Path, drop: tuple[str, ...] = ()) -> list[dict[str, str]]:
    with open(run_dir / "history.csv", newline="") as fh:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(fh)]


def one_error_line(stderr: str, *needles: str) -> str:
    """The single `bloodmnist ...: error:` line of stderr (no traceback), checked for needles."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if ": error:" in line]
    assert len(lines) == 1, stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def temp_files(folder: Path) -> list[str]:
    """Leftover temp files of the atomic writers (.<name>.<random>[.tmp])."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def small_npz(path: Path, n: int = 32, **changes: np.ndarray | None) -> Path:
    """The first n samples per split of the real data; `changes` replaces (None: drops) keys."""
    with np.load(DATA) as src:
        arrays = {k: src[k][:n] for k in src.files}
    for key, value in changes.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    np.savez_compressed(path, **arrays)
    return path
