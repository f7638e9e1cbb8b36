"""benchmarks/learning_curve.py: real trainings on all and on fewer training images, stopped
with SIGTERM and continued, the pairs and the verdict read from the runs' own files."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "learning_curve.py"
N = 400  # images per split of the small source file


def _cmd(src: Path, out: Path, keep: int = 300) -> list[str]:
    sets = ["model.arch=resnet9", "model.width=0.125", "eval.tta=false", "eval.compare_tta=false"]
    cmd = [sys.executable, str(SCRIPT), str(src), "--out", str(out), "--seeds", "1"]
    cmd += ["--keep", str(keep), "--jobs", "2", "--metric", "best_val_acc"]
    cmd += [a for s in sets for a in ("--set", s)]
    return [*cmd, "--", "--epochs", "8", "--precision", "fp32", "--pretrained", "none"]


def _wait_for_a_checkpoint(out: Path, proc: subprocess.Popen, limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while not list(out.glob("runs/*/checkpoints/last.pt")):
        assert proc.poll() is None and time.monotonic() < deadline, "no epoch finished"
        time.sleep(0.2)


def test_a_curve_is_stopped_continued_and_read(shared_data: Path, tmp_path: Path) -> None:
    with np.load(shared_data) as f:
        np.savez(tmp_path / "small.npz", **{k: f[k][:N] for k in f.files})
    src, out = tmp_path / "small.npz", tmp_path / "lc"
    _bad_arguments_are_refused_before_anything_is_written(src, tmp_path)
    early = out / "runs" / "small_fewer_s1"  # a start stopped before its first epoch ended
    early.mkdir(parents=True)
    (early / "train.log").write_text("stopped\n")
    proc = subprocess.Popen(_cmd(src, out), stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    _wait_for_a_checkpoint(out, proc)
    proc.send_signal(signal.SIGTERM)  # reaches the runs, which stop after their step
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "the same command continues them" in err, err
    assert not (out / "learning-curve.json").exists()
    runs = [p.parent for p in out.glob("runs/*/summary.json")]
    status = {r: json.loads((r / "summary.json").read_text())["status"] for r in runs}
    stopped = [r for r, said in status.items() if said == "interrupted"]
    assert stopped and len(runs) == 2 and "completed" not in status.values(), status

    done = subprocess.run(_cmd(src, out), capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    assert all("resumed after epoch" in (r / "train.log").read_text() for r in stopped)
    curve = json.loads((out / "learning-curve.json").read_text())
    assert [(p["seed"], p["train_all"], p["train_fewer"]) for p in curve["pairs"]] == [(1, N, 300)]
    for pair in curve["pairs"]:
        for kind in ("all", "fewer"):
            summary = json.loads(
                (out / "runs" / f"small_{kind}_s{pair['seed']}" / "summary.json").read_text()
            )
            assert pair[kind] == summary["best_val_acc"] and summary["epochs_run"] == 8
        assert pair["fewer_minus_all_images"] == round((pair["fewer"] - pair["all"]) * N)
    drop = 100 * np.mean([p["all"] - p["fewer"] for p in curve["pairs"]])
    higher = sum(p["fewer"] > p["all"] for p in curve["pairs"])
    assert curve["mean_drop_points"] == round(drop, 4)
    assert (out / "runs" / "small_fewer_s1.stopped1" / "train.log").read_text() == "stopped\n"
    assert curve["verdict"] == ("more images help" if drop >= 0.1 and higher <= 1 else "not shown")
    with np.load(out / "small_keep300.npz") as f:
        assert len(f["train_labels"]) == 300 and len(f["val_labels"]) == N

    logs = {p: p.stat().st_size for p in out.glob("runs/*.log")}
    again = subprocess.run(
        _cmd(src, out), capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert again.returncode == 0 and {p: p.stat().st_size for p in logs} == logs  # nothing ran
    other = subprocess.run(_cmd(src, out, keep=200), capture_output=True, text=True, timeout=60)
    assert other.returncode == 2 and other.stderr.count("\n") == 1, other.stderr
    assert "was started with other keep; use another --out" in other.stderr


def _bad_arguments_are_refused_before_anything_is_written(src: Path, tmp_path: Path) -> None:
    bad = {
        "--keep must be in 1..399": ["--keep", "5000"],
        "--jobs must be >= 1": ["--jobs", "0"],
        "needs TTA, which eval.tta=false turns off": ["--metric", "val_acc_tta"],
        "model.width": ["--set", "model.width=-1"],
    }
    for says, args in bad.items():
        out = tmp_path / "refused"
        cmd = _cmd(src, out)
        cmd[cmd.index("--") : cmd.index("--")] = args  # after the defaults: argparse takes the last
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert says in proc.stderr and not out.exists(), proc.stderr
