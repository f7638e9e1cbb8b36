"""tests/cli_fork.py: a command forked from the pre-imported server behaves as `python -m
bloodmnist` started afresh (same exit status, output, files and numbers), and what a fork cannot
reproduce goes to a real interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_fork import needs_exec, run_forked
from conftest import describe

TINY = [
    "train", "--recipe", "fast", "--subset", "32", "--epochs", "1", "--seed", "3",
    "--set", "runtime.threads=1", "--set", "runtime.reports=false",
    "--set", "runtime.tensorboard=false", "--set", "eval.tta=false",
]  # fmt: skip


def both(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, ...]:
    """The command run by a fresh interpreter and by a fork, each in its own folder."""
    (cwd / "exec").mkdir()
    (cwd / "fork").mkdir()
    fresh = subprocess.run(
        [sys.executable, "-m", "bloodmnist", *args],
        cwd=cwd / "exec",
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    forked = run_forked(args, cwd / "fork", 300, dict(os.environ))
    return fresh, forked


@pytest.mark.parametrize(
    "args",
    [
        ["--version"],
        ["train", "--epochs", "0"],  # a config check: one line, status 2
        ["train", "--bogus"],  # argparse: usage (its program name comes from sys.argv) and status 2
        ["evaluate", "no-such-run"],  # the CLI's own one-line error
        ["data", "info", "--data", "no-such.npz"],
    ],
)
def test_fork_gives_the_status_and_output_of_a_fresh_process(args: list[str], tmp_path) -> None:
    fresh, forked = both(args, tmp_path)
    assert fresh.stdout or fresh.stderr
    assert forked.returncode == fresh.returncode, (describe(fresh), describe(forked))
    assert forked.stdout == fresh.stdout
    assert forked.stderr == fresh.stderr


def test_a_forked_training_matches_a_fresh_one(shared_data: Path, tmp_path: Path) -> None:
    """Same weights-derived numbers and the same recorded command (sys.argv as `-m` sets it)."""
    fresh, forked = both([*TINY, "--data", str(shared_data), "--out", "run"], tmp_path)
    assert fresh.returncode == 0 and forked.returncode == 0, (describe(fresh), describe(forked))
    runs = [tmp_path / kind / "run" for kind in ("exec", "fork")]
    summaries = [json.loads((run / "summary.json").read_text()) for run in runs]
    for key in ("test_acc", "test_macro_f1", "test_auc", "best_val_acc", "train_pflop"):
        assert summaries[0][key] == summaries[1][key], key
    manifests = [json.loads((run / "manifest.json").read_text()) for run in runs]
    assert manifests[0]["command"] == manifests[1]["command"]
    assert manifests[0]["command"][0].endswith(os.path.join("bloodmnist", "__main__.py"))


def test_a_command_past_its_timeout_is_killed(shared_data: Path, tmp_path: Path) -> None:
    args = [*TINY, "--data", str(shared_data), "--epochs", "500", "--out", "run"]
    with pytest.raises(subprocess.TimeoutExpired):
        run_forked(args, tmp_path, 1.0, dict(os.environ))


def test_what_a_fork_cannot_reproduce_runs_in_a_fresh_interpreter(monkeypatch) -> None:
    monkeypatch.delenv("BLOODMNIST_TEST_EXEC", raising=False)
    env = dict(os.environ)
    assert not needs_exec(env)
    assert not needs_exec({**env, "HOME": "/elsewhere"})  # read when the command runs
    for key in ("PYTHONPATH", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "TORCH_HOME", "TMPDIR"):
        assert needs_exec({**env, key: "x"}), key  # read when an interpreter/library starts
    assert needs_exec({**env, "BLOODMNIST_TEST_EXEC": "1"})  # asked for by one call
    monkeypatch.setenv("BLOODMNIST_TEST_EXEC", "1")
    assert needs_exec(dict(os.environ))
