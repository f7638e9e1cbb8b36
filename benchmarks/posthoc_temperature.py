"""The temperatures `eval.temperature_scaling` would have fitted for finished runs, and their test
calibration after it: best.pt on validation (plain and TTA), applied to the run's saved test
probabilities, with the library code training uses (`temperature_from_probs`).

    python benchmarks/posthoc_temperature.py RUN_DIR... --out results.json
    python benchmarks/posthoc_temperature.py RUN_DIR... --fixed 0.515 0.453 --out results.json

Runs trained before the recipes turned temperature scaling on (fast v5, best v3) get the numbers
they would have had; nothing in the run folders is changed. `--fixed T T_TTA` applies given
temperatures instead of fitting them (what `eval.temperature` and `eval.temperature_tta` would
have stored): for runs trained on train + val, which have no held-out images to fit on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bloodmnist.data.source import load_data
from bloodmnist.evaluation.final import calibration_at, evaluate_split, temperature_from_probs
from bloodmnist.runtime import setup_runtime
from bloodmnist.training.checkpoint import checkpoint_config, load_checkpoint
from bloodmnist.training.teacher import load_eval_model


def _test_probs(run: Path) -> dict:
    with np.load(run / "predictions.npz") as p:
        test = {"labels": p["test_labels"].reshape(-1), "probs": p["test_probs"]}
        test["probs_tta"] = p["test_probs_tta"]
    return test


def posthoc(run: Path, threads: int) -> dict:
    """Fit T on validation with the run's own device and precision; calibrate its test probs."""
    ckpt = run / "checkpoints" / "best.pt"
    cfg = checkpoint_config(load_checkpoint(ckpt))
    rt = setup_runtime(cfg.runtime.device, cfg.runtime.precision, threads)
    model, _, _ = load_eval_model(ckpt, rt.device, rt.channels_last)
    data, _ = load_data(
        cfg.data.path, cfg.data.size, cfg.model.num_classes, cfg.data.subset, progress=False
    )
    val = evaluate_split(model, data, "val", cfg, rt, True, compare_tta=False)
    summary = json.loads((run / "summary.json").read_text())
    out = temperature_from_probs(val, _test_probs(run))
    out.update(test_ece=summary["test_ece"], test_ece_tta=summary["test_ece_tta"])
    return {**out, "precision": rt.precision}


def at_fixed(run: Path, t: float, t_tta: float) -> dict:
    """The test calibration of the run's saved probabilities at the given temperatures."""
    summary = json.loads((run / "summary.json").read_text())
    out = calibration_at(_test_probs(run), t, t_tta)
    out.update(test_ece=summary["test_ece"], test_ece_tta=summary["test_ece_tta"])
    return {**out, "temperature_source": "fixed (--fixed)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, help="new JSON file")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fixed", nargs=2, type=float, metavar=("T", "T_TTA"))
    args = ap.parse_args()
    results = {}
    for run in args.runs:
        fixed = args.fixed is not None
        results[str(run)] = at_fixed(run, *args.fixed) if fixed else posthoc(run, args.threads)
        print(run, json.dumps(results[str(run)]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
