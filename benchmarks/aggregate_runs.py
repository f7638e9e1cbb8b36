"""Aggregate finished run folders into a study.json, as `bloodmnist study` does.

    python benchmarks/aggregate_runs.py RUN_DIR [RUN_DIR ...] --out FILE.json \
        [--train-args "--recipe fast --data D.npz"] [--n-boot 1000]

For runs trained with one config that were not started by one study, e.g. seeds whose
`eval.tta_mode` differs (a recipe's TTA changed between them; training is the same): `study
--adopt` refuses such a mix, while every run reports both TTA modes, so the seed-mean numbers and
CIs of each mode (`test_acc_tta_<mode>`, `ci95_seed_mean.tta_<mode>`) are still exact. The
`plan` records the run folders and the train options that reproduce them.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from bloodmnist.evaluation.study_stats import aggregate_runs, load_seed_run


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--train-args", default="", help="the train options that reproduce the runs")
    p.add_argument("--n-boot", type=int, default=1000)
    args = p.parse_args(argv)
    if args.out.exists():
        p.error(f"{args.out} already exists; choose a new --out file")
    runs = []
    for run_dir in args.runs:
        seed = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))["seed"]
        runs.append(load_seed_run(seed, run_dir))
    seeds = [r.seed for r in runs]
    if len(set(seeds)) < len(seeds) or len({r.run_dir.resolve() for r in runs}) < len(runs):
        p.error(f"every run must be another seed of the same recipe; seeds given: {seeds}")
    record = aggregate_runs(runs, n_boot=args.n_boot)
    record["plan"] = {
        "seeds": record["seeds"],
        "train_args": shlex.split(args.train_args),
        "runs": [str(r.resolve()) for r in args.runs],
        "tta_modes": [r.summary.get("tta_mode") for r in runs],
        "aggregated_by": "benchmarks/aggregate_runs.py",
    }
    record["failed"] = []
    args.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


if __name__ == "__main__":
    main()
