"""Aggregate the seed runs of a study: per-seed values, mean ± std, bootstrap CIs, per-class.

Reads each run folder (summary.json, predictions.npz, history.csv) and returns plain dicts; the
writing of study.json / .xlsx / .html lives in `bloodmnist.reporting.study_report`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bloodmnist.errors import BloodMNISTError
from bloodmnist.evaluation.run_files import (
    TTA_MODES,
    class_names,
    joint_train_on,
    load_history,
    load_predictions,
    load_summary,
    load_test_metrics,
    tta_mode_of,
    tta_probs,
    tta_was_run,
)
from bloodmnist.evaluation.stats import (
    DEFAULT_BOOT_SEED,
    DEFAULT_N_BOOT,
    PROB_METRICS,
    bootstrap_ci,
    mean_std,
    seed_mean,
)

#: summary.json keys summarised over seeds (missing ones are skipped, not invented).
SUMMARY_KEYS = tuple(
    f"test_{m}{v}"
    for m in ("acc", "macro_f1", "auc", "ece", "nll", "brier")
    for v in ("", "_tta", "_ts", "_tta_ts")
    if not (m in ("acc", "macro_f1", "auc") and v.endswith("_ts"))
) + (
    "temperature",
    "temperature_tta",
    *(f"test_{m}_tta_{mode}" for mode in TTA_MODES for m in ("acc", "macro_f1", "auc")),
    "best_val_acc",
    "val_acc_tta",
    *(f"val_acc_tta_{mode}" for mode in TTA_MODES),
    "best_epoch",
    "epochs_run",
    "train_seconds",
    "train_pflop",
)
VARIANT_PROBS = {"plain": "test_probs", "tta": "test_probs_tta"}


@dataclass
class SeedRun:
    seed: int
    run_dir: Path
    summary: dict[str, Any]
    preds: dict[str, np.ndarray]
    history: list[dict[str, Any]]


def load_seed_run(seed: int, run_dir: Path) -> SeedRun:
    """A finished seed run; BloodMNISTError if its files are missing or it did not complete."""
    summary = load_summary(run_dir)
    if summary.get("status") != "completed":
        raise BloodMNISTError(f"{run_dir} did not complete (status {summary.get('status')!r})")
    return SeedRun(seed, Path(run_dir), summary, load_predictions(run_dir), load_history(run_dir))


def check_same_test_data(runs: list[SeedRun]) -> tuple[str | None, np.ndarray]:
    """Data MD5 and test labels shared by all runs, or one clear error naming the odd run."""
    first = runs[0]
    labels = first.preds["test_labels"].reshape(-1)
    for run in runs[1:]:
        md5 = run.summary.get("data_md5")
        if md5 != first.summary.get("data_md5"):
            raise BloodMNISTError(
                f"{run.run_dir} used data MD5 {md5}, {first.run_dir} used "
                f"{first.summary.get('data_md5')}; a study needs one data file"
            )
        other = run.preds["test_labels"].reshape(-1)
        if other.shape != labels.shape or not np.array_equal(other, labels):
            raise BloodMNISTError(
                f"{run.run_dir} and {first.run_dir} have different test labels "
                "(different --subset?); a study needs one test set"
            )
    return first.summary.get("data_md5"), labels


def _variants(runs: list[SeedRun]) -> list[str]:
    """TTA only when every seed ran it (no plain numbers dressed up as TTA)."""
    return ["plain", "tta"] if all(tta_was_run(r.summary) for r in runs) else ["plain"]


def _per_class(runs: list[SeedRun], variant: str) -> list[dict[str, Any]]:
    tta = variant == "tta"
    tables = [load_test_metrics(r.summary, r.preds, tta=tta)["per_class"] for r in runs]
    out = []
    for i, row in enumerate(tables[0]):
        out.append(
            {
                "class": row["class"],
                "support": row["support"],
                "recall": mean_std([t[i]["recall"] for t in tables]),
                "f1": mean_std([t[i]["f1"] for t in tables]),
            }
        )
    return out


def _seed_cis(run: SeedRun, variants: list[str], n_boot: int, boot_seed: int) -> dict:
    y = run.preds["test_labels"].reshape(-1)
    return {
        v: {
            name: bootstrap_ci(fn, y, run.preds[VARIANT_PROBS[v]], n_boot, boot_seed)
            for name, fn in PROB_METRICS.items()
        }
        for v in variants
    }


def _value(summary: dict[str, Any], key: str) -> Any:
    """summary[key]; for a `*_tta_<mode>` key of the run's own TTA mode, its `*_tta` value, so
    every mode has its numbers under one name whatever mode each seed ran."""
    value = summary.get(key)
    base, sep, mode = key.rpartition("_tta_")
    if value is None and sep and mode == tta_mode_of(summary) and tta_was_run(summary):
        value = summary.get(f"{base}_tta")
    return value


def _mean_cis(runs: list[SeedRun], variants: list[str], n_boot: int, boot_seed: int) -> dict:
    """CI of the seed-averaged metric: resample test images once, score every seed on them.
    Besides `variants`, `tta_<mode>` for each TTA mode that every seed has (both, where the
    runs reported the other mode beside their own)."""
    y = runs[0].preds["test_labels"].reshape(-1)
    probs = {v: [r.preds[VARIANT_PROBS[v]] for r in runs] for v in variants}
    if "tta" in variants:
        for mode in TTA_MODES:
            per_run = [tta_probs(r.summary, r.preds, mode) for r in runs]
            if all(p is not None for p in per_run):
                probs[f"tta_{mode}"] = per_run
    out = {}
    for v, per_run in probs.items():
        stacked = np.stack(per_run, axis=1)  # (N, S, C)
        out[v] = {
            name: bootstrap_ci(seed_mean(fn), y, stacked, n_boot, boot_seed)
            for name, fn in PROB_METRICS.items()
        }
    return out


def temperature_sources(summaries: list[dict[str, Any]]) -> list[str]:
    """Where the seeds' temperatures came from: validation (runs from before the key too)
    or eval.temperature; [] where none has one."""
    has_t = [s for s in summaries if s.get("temperature") is not None]
    return sorted({s.get("temperature_source", "validation") for s in has_t})


def aggregate_runs(
    runs: list[SeedRun], n_boot: int = DEFAULT_N_BOOT, boot_seed: int = DEFAULT_BOOT_SEED
) -> dict[str, Any]:
    """The study.json content (without the failure list and plan, which the caller adds)."""
    if not runs:
        raise BloodMNISTError("no seed run completed, so there is nothing to aggregate")
    md5, labels = check_same_test_data(runs)
    variants = _variants(runs)
    per_seed = []
    for run in runs:
        values = {k: _value(run.summary, k) for k in SUMMARY_KEYS}
        values = {k: v for k, v in values.items() if v is not None or k in run.summary}
        ci = _seed_cis(run, variants, n_boot, boot_seed)
        per_seed.append({"seed": run.seed, "run_dir": run.run_dir.name, **values, "ci95": ci})
    present = [k for k in SUMMARY_KEYS if any(k in s for s in per_seed)]
    return {
        "seeds": [r.seed for r in runs],
        "n_seeds": len(runs),
        "data_md5": md5,
        "test_n": int(labels.size),
        # a seed trained on the validation images: the val numbers below are not held out
        "train_on": joint_train_on([r.summary for r in runs]),
        "temperature_source": temperature_sources([r.summary for r in runs]),
        "variants": variants,
        "class_names": class_names(runs[0].preds),
        "mean_std": {k: mean_std([_value(r.summary, k) for r in runs]) for k in present},
        "ci95_seed_mean": _mean_cis(runs, variants, n_boot, boot_seed),
        "per_class": {v: _per_class(runs, v) for v in variants},
        "per_seed": per_seed,
        "bootstrap": {"n_boot": n_boot, "seed": boot_seed, "level": 0.95, "unit": "test image"},
        "std_ddof": 1,
    }
