"""A short CLI command as a fresh interpreter vs forked from a pre-imported server, in ONE run;
and what `predict` imports now vs with scikit-learn and SciPy's optimiser added (what it
loaded before evaluation/calibration.py imported SciPy where it is used).

    python benchmarks/cli_startup.py [--data FILE.npz] [--reps 5]

The command is what the test suite runs most: a one-epoch `train` of the fast recipe on 32
images per split (reports off). Each repetition runs it once each way, alternating, so
background load hits both alike; the first fork (which starts the server and imports torch
there) is reported apart. The fork path is tests/cli_fork.py, the one the suite uses. The last
line is one JSON object with the medians and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from cli_fork import run_forked  # noqa: E402


def command(data: Path, out: Path) -> list[str]:
    return [
        "train", "--recipe", "fast", "--data", str(data), "--subset", "32", "--epochs", "1",
        "--out", str(out), "--quiet", "--set", "runtime.threads=1",
        "--set", "runtime.reports=false", "--set", "runtime.tensorboard=false",
    ]  # fmt: skip


def fresh(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bloodmnist", *args], cwd=cwd, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return time.perf_counter() - start


def forked(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    done = run_forked(args, cwd, 600, dict(os.environ))
    assert done.returncode == 0, done.stderr[-2000:]
    return time.perf_counter() - start


PREDICT_IMPORTS = "import bloodmnist.cli.infer_commands, bloodmnist.inference.torch_engine"


def import_time(extra: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", PREDICT_IMPORTS + extra], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=REPO.parent / "shared/data/bloodmnist_pbc_28.npz"
    )
    parser.add_argument("--reps", type=int, default=5)
    opts = parser.parse_args()
    names = ("exec", "fork", "predict imports", "+ sklearn, scipy.optimize")
    times: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        first_fork = forked(command(opts.data, work / "warm"), work)
        for i in range(opts.reps):
            times["exec"].append(fresh(command(opts.data, work / f"e{i}"), work))
            times["fork"].append(forked(command(opts.data, work / f"f{i}"), work))
        for _ in range(opts.reps):
            times["predict imports"].append(import_time(""))
            times["+ sklearn, scipy.optimize"].append(
                import_time(", sklearn.metrics, scipy.optimize")
            )
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{'what':26} {'median s':>9}  runs (s)")
    for way, values in times.items():
        print(f"{way:26} {med[way]:9.2f}  {' '.join(f'{v:.2f}' for v in values)}")
    print(f"first fork (server start + preload): {first_fork:.2f} s")
    print(f"load average {os.getloadavg()[0]:.2f}, {platform.processor() or platform.machine()}")
    result = {
        "exec_median_s": round(med["exec"], 3),
        "fork_median_s": round(med["fork"], 3),
        "saved_per_command_s": round(med["exec"] - med["fork"], 3),
        "exec_over_fork": round(med["exec"] / med["fork"], 2),
        "first_fork_s": round(first_fork, 3),
        "predict_imports_s": round(med["predict imports"], 3),
        "predict_imports_before_s": round(med["+ sklearn, scipy.optimize"], 3),
        "reps": opts.reps,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
