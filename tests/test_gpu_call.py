"""The prepared lent-GPU call (benchmarks/gpu_prepare.sh + gpu_frontier.sh), dry-run on this CPU
with SMOKE=1: a broken script would otherwise only show on the device, where minutes count."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from bloodmnist import __version__

REPO = Path(__file__).resolve().parents[1]


def _bash(
    script: str, cwd: Path, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", f"benchmarks/{script}"],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_prepared_gpu_call_runs_end_to_end_on_a_cpu(shared_data: Path, tmp_path: Path) -> None:
    # A checkout as the device receives it, without .gpudata: no wheels to install
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("src", "benchmarks"):
        (root / name).symlink_to(REPO / name)
    prep = _bash("gpu_prepare.sh", root, {"PY": sys.executable}, timeout=120)
    assert prep.returncode == 0, prep.stderr
    assert prep.stdout.splitlines()[0] == f"bloodmnist {__version__}"
    assert str(root / "src") in (root / ".gpudata" / "bin" / "bloodmnist").read_text()

    out = tmp_path / "out"
    env = {
        "SMOKE": "1",
        "PATH": f"{root / '.gpudata' / 'bin'}:{os.environ['PATH']}",
        "PY": sys.executable,
        "OUT": str(out),
        "DATA28": str(shared_data),
    }
    typo = _bash("gpu_frontier.sh", root, {**env, "STEPS": "fastspeed bestwid"}, timeout=60)
    assert typo.returncode == 2 and "unknown step 'bestwid'" in typo.stderr
    assert not out.exists()  # refused before anything ran

    call = _bash("gpu_frontier.sh", root, {**env, "STEPS": "fastspeed"}, timeout=600)
    assert call.returncode == 0, call.stdout + call.stderr
    with open(out / "fastspeed" / "speed.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["recipe"] == "fast" and row["rc"] == "0" and row["status"] == "completed"
    assert float(row["wall_s"]) > float(row["train_seconds"]) > 0
    assert 0 < float(row["train_pflop"]) < 1e-3  # one epoch of 64 images
    assert 0 <= float(row["test_acc_tta"]) <= 1
    with tarfile.open(out / "runs.tar.gz") as tar:
        names = tar.getnames()
    assert any(n.endswith("/summary.json") for n in names)
    assert not any(n.endswith(".pt") for n in names)  # checkpoints stay on the device
    assert "fastspeed: exit 0" in (out / "commands.txt").read_text()
