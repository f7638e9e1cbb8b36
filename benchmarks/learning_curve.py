"""A learning curve on validation: does a recipe score lower when it trains on fewer images?

    python benchmarks/learning_curve.py ../shared/data/bloodmnist_pbc_28.npz --out lc3 \
        --resplit-seeds 1,2 --seeds 42,43,44 --recipe fast --keep 10247 --jobs 2

The question before training a final model on train + val (`data.train_on`): if 1,712 fewer
training images lower the validation accuracy, 1,712 more should raise the test accuracy. For
each data file (the source, or its re-splits with --resplit-seeds: `resplit.py`'s draws) it
writes a file with --keep of the training images (`resplit.fewer_train`, val and test as they
are), trains every seed on both with `bloodmnist train` (one thread each, --jobs at a time) and
writes OUT/learning-curve.json: each pair's validation accuracy (--metric, the recipe's TTA by
default) with all and with fewer images, the difference in images, the pooled mean and the
verdict of a rule fixed before the runs: fewer images lower the pooled mean by at least
--min-drop points and score higher in at most --max-higher pairs. The test accuracy each run
reads once is recorded beside it and decides nothing.

Runs already complete are reused and runs stopped part-way continue with `train --resume`, so
the script may be stopped (SIGTERM or Ctrl-C reach the runs, which stop after their step) and
started again with the same arguments; other arguments for an existing OUT are refused.
Arguments after `--` go to every new `bloodmnist train` (a smoke run: `-- --epochs 1 --subset 96`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import resplit  # noqa: E402  (the sibling script: its draws and fewer_train)

RUN_SETS = ["runtime.threads=1", "runtime.reports=false", "runtime.tensorboard=false"]
NOT_STARTED = -1  # run_one's code for a run the stop came before
_children: list[subprocess.Popen] = []
_stop = threading.Event()
_lock = threading.Lock()  # a stop either sees a child or keeps it from starting


def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write whole or not at all: a stop half-way must not leave a file the next start reuses."""
    part = path.with_name(path.stem + ".part.npz")
    np.savez_compressed(part, **arrays)
    os.replace(part, path)


def make_files(args: argparse.Namespace) -> list[tuple[str, Path, Path]]:
    """(name, file with all training images, file with --keep of them) per data file."""
    with np.load(args.src) as f:
        src = {k: f[k] for k in f.files}
    bases = [(args.src.stem, args.src, src)]
    if args.resplit_seeds:
        bases = [(f"resplit{s}", args.out / f"resplit{s}.npz", None) for s in args.resplit_seeds]
    files = []
    for name, path, arrays in bases:
        if arrays is None:
            arrays = resplit.resplit(src, int(name.removeprefix("resplit")))[0]
            if not path.exists():
                _save(path, arrays)
        less = args.out / f"{name}_keep{args.keep}.npz"
        if not less.exists():
            _save(less, resplit.fewer_train(arrays, args.keep, args.keep_seed))
        files.append((name, path, less))
    return files


def train_cmd(args: argparse.Namespace, seed: int, data: Path, run: Path) -> list[str] | None:
    """The command that completes `run` (None: it is complete)."""
    summary = run / "summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("status") == "completed":
        return None
    if (run / "checkpoints" / "last.pt").is_file():
        return [args.bm, "train", "--resume", str(run), "--set", "runtime.threads=1"]
    if run.exists():  # stopped before its first epoch ended: kept aside, started again
        n = 1 + len(list(run.parent.glob(f"{run.name}.stopped*")))
        run.rename(run.with_name(f"{run.name}.stopped{n}"))
    cmd = [args.bm, "train", "--recipe", args.recipe, "--seed", str(seed), "--data", str(data)]
    cmd += ["--out", str(run), "--quiet"]
    for item in RUN_SETS + args.set:
        cmd += ["--set", item]
    return cmd + args.train_args


def run_one(cmd: list[str] | None, log: Path) -> int:
    """Run `cmd` with its output in `log`; 0 for a complete run, the exit status otherwise."""
    if cmd is None:
        return 0
    with open(log, "a") as out:
        with _lock:
            if _stop.is_set():
                return NOT_STARTED
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
            _children.append(proc)
        return proc.wait()


def _forward(signum: int, _frame: object) -> None:
    """Stop: no new runs; the running ones get the signal and stop after their step."""
    with _lock:
        _stop.set()
        for proc in _children:
            if proc.poll() is None:
                proc.send_signal(signum)


def read_curve(args: argparse.Namespace, files: list[tuple[str, Path, Path]]) -> dict:
    """Pairs of (all, fewer) accuracies per file and seed, their pooled mean and the verdict."""
    pairs = []
    for name, _full, _less in files:
        for seed in args.seeds:
            got, n = {}, {}
            for kind in ("all", "fewer"):
                run = args.out / "runs" / f"{name}_{kind}_s{seed}"
                summary = json.loads((run / "summary.json").read_text())
                splits = json.loads((run / "manifest.json").read_text())["data"]["splits"]
                got[kind] = summary[args.metric]
                for key in ("test_acc", "test_acc_tta"):  # read once by the run; choose nothing
                    got[f"{key}_{kind}"] = summary.get(key)
                n["n_val"], n[f"train_{kind}"] = splits["val"]["n"], splits["train"]["n"]
            diff = round((got["fewer"] - got["all"]) * n["n_val"])
            pairs.append({"file": name, "seed": seed, **n, **got, "fewer_minus_all_images": diff})
    drop = 100 * float(np.mean([p["all"] - p["fewer"] for p in pairs]))
    higher = sum(p["fewer"] > p["all"] for p in pairs)
    return {
        "metric": args.metric,
        "pairs": pairs,
        "mean_drop_points": round(drop, 4),
        "pairs_higher_with_fewer": higher,
        "rule": f"mean drop >= {args.min_drop} points and at most {args.max_higher} pair(s) higher",
        "verdict": "more images help"
        if drop >= args.min_drop and higher <= args.max_higher
        else "not shown",
        "note": "test_acc(_tta)_all/_fewer: each run's one test reading; they decide nothing",
    }


def parse(argv: list[str]) -> argparse.Namespace:
    argv, extra = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    )
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="a MedMNIST-layout .npz")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--recipe", default="fast")
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[42, 43, 44])
    ap.add_argument("--resplit-seeds", type=lambda s: [int(x) for x in s.split(",")], default=[])
    ap.add_argument("--keep", type=int, default=10247, help="training images in the fewer file")
    ap.add_argument("--keep-seed", type=int, default=1)
    ap.add_argument("--metric", default="val_acc_tta")
    ap.add_argument("--min-drop", type=float, default=0.10, help="points")
    ap.add_argument("--max-higher", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--bm", default=str(Path(sys.executable).with_name("bloodmnist")))
    args = ap.parse_args(argv)
    args.train_args = extra
    return args


def check_args(args: argparse.Namespace) -> str | None:
    """What would fail only after the runs: the file, --keep, --jobs, the config and --metric."""
    from bloodmnist.config import build_config
    from bloodmnist.errors import BloodMNISTError

    if not args.src.is_file():
        return f"{args.src} not found; pass a MedMNIST-layout .npz"
    with np.load(args.src) as f:
        n_train = len(f["train_labels"])
    if not 0 < args.keep < n_train:
        return f"--keep must be in 1..{n_train - 1} (the file has {n_train} training images)"
    if args.jobs < 1:
        return f"--jobs must be >= 1, got {args.jobs}"
    try:
        cfg = build_config(overrides=RUN_SETS + args.set, recipe=args.recipe)
    except BloodMNISTError as e:
        return str(e)
    if args.metric.startswith("val_acc_tta") and not cfg.eval.tta:
        return f"--metric {args.metric} needs TTA, which eval.tta=false turns off; use best_val_acc"
    return None


def check_plan(args: argparse.Namespace) -> str | None:
    """OUT/plan.json: the arguments OUT was started with; others are refused (why, or None)."""
    keys = ("src", "recipe", "seeds", "resplit_seeds", "keep", "keep_seed", "set", "train_args")
    keys += ("metric", "min_drop", "max_higher")  # the rule is fixed with the runs
    plan = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k in keys}
    path = args.out / "plan.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != plan:
            diff = sorted(k for k in keys if old.get(k) != plan.get(k))
            return f"{args.out} was started with other {', '.join(diff)}; use another --out"
        return None
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan, indent=1))
    return None


def main(argv: list[str]) -> int:
    args = parse(argv)
    if (why := check_args(args) or check_plan(args)) is not None:
        print(f"error: {why}", file=sys.stderr)
        return 2
    files = make_files(args)
    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
    jobs = []
    for name, full, less in files:
        for seed in args.seeds:
            for kind, data in (("all", full), ("fewer", less)):
                run = args.out / "runs" / f"{name}_{kind}_s{seed}"
                jobs.append((train_cmd(args, seed, data, run), run.with_suffix(".log")))
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        codes = list(pool.map(lambda job: run_one(*job), jobs))
    if any(codes):
        failed = [str(log) for (_, log), code in zip(jobs, codes, strict=True) if code > 0]
        waiting = codes.count(NOT_STARTED)
        print(
            f"error: {len(failed)} run(s) did not complete (see {', '.join(failed) or '-'}), "
            f"{waiting} not started; the same command continues them",
            file=sys.stderr,
        )
        return 1
    result = read_curve(args, files)
    (args.out / "learning-curve.json").write_text(json.dumps(result, indent=1))
    print(
        f"{args.out / 'learning-curve.json'}: mean drop {result['mean_drop_points']:.2f} points, "
        f"{result['pairs_higher_with_fewer']} pair(s) higher with fewer: {result['verdict']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
