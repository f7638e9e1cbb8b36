"""Predictions in the official MedMNIST evaluator's file layout, so results can be re-checked.

The evaluator (``medmnist.Evaluator.parse_and_evaluate``) reads a header-less CSV whose rows are
``index,score_0,...,score_{C-1}`` and takes flag, split and run from the file name:
``{flag}{size_flag}_{split}_[AUC]{auc:.3f}_[ACC]{acc:.3f}@{run}.csv`` with ``size_flag`` empty
for 28 px and ``_64`` etc. otherwise. It scores against the labels of the official file, so a
check with it is only meaningful for runs on the official, full test split.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from bloodmnist.atomic import atomic_open
from bloodmnist.errors import BloodMNISTError
from bloodmnist.evaluation.metrics import roc_auc_ovr

log = logging.getLogger("bloodmnist")
FLAG = "bloodmnist"
_NAME = re.compile(
    r"^(?P<flag>[a-z]+)(?:_(?P<size>\d+))?_(?P<split>train|val|test)"
    r"_\[AUC\](?P<auc>[0-9.]+|nan)_\[ACC\](?P<acc>[0-9.]+)@(?P<run>[^@]*)\.csv$"
)


def evaluator_metrics(labels: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """(AUC, ACC) as the MedMNIST evaluator computes them for multi-class tasks.

    Its AUC is the plain mean of the one-vs-rest AUCs over all classes (no class skipped), so it
    is NaN when a class is absent from the labels (e.g. a tiny --subset).
    """
    y = np.asarray(labels).reshape(-1)
    p = np.asarray(probs, dtype=np.float64)
    return float(np.mean(roc_auc_ovr(y, p))), float(np.mean(p.argmax(axis=1) == y))


def safe_run_name(run: str) -> str:
    """The evaluator cuts the run name at the first '.', and '@' / '/' would break the name."""
    return re.sub(r"[^A-Za-z0-9_+-]", "-", run) or "run"


def evaluator_filename(split: str, size: int, auc: float, acc: float, run: str) -> str:
    size_flag = "" if size == 28 else f"_{size}"
    auc_txt = "nan" if np.isnan(auc) else f"{auc:.3f}"
    return f"{FLAG}{size_flag}_{split}_[AUC]{auc_txt}_[ACC]{acc:.3f}@{safe_run_name(run)}.csv"


def write_evaluator_csv(
    folder: Path, labels: np.ndarray, probs: np.ndarray, size: int, run: str, split: str = "test"
) -> Path:
    """Write the CSV (never over an existing file of the same name) and return its path."""
    auc, acc = evaluator_metrics(labels, probs)
    path = Path(folder) / evaluator_filename(split, size, auc, acc, run)
    if path.exists():
        raise BloodMNISTError(f"{path} already exists; move it away or write to another folder")
    with atomic_open(path, binary=False, newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        for i, row in enumerate(np.asarray(probs, dtype=np.float64)):
            # repr-precision floats: the evaluator recomputes AUC from these exact values
            writer.writerow([i, *(repr(float(v)) for v in row)])
    return path


def write_run_csvs(run_dir: Path, result: dict[str, Any], size: int) -> list[Path]:
    """A run's test CSVs: plain as ``@<run>``, TTA (when computed) as ``@<run>-tta``.

    A rerun of the final evaluation (``--resume`` with more epochs) replaces this run's earlier
    CSVs, whose names carry stale metrics; the log names each replaced file.
    """
    run_dir = Path(run_dir)
    paths = []
    for key, suffix in (("probs", ""), ("probs_tta", "-tta")):
        if key not in result:
            continue
        run = safe_run_name(run_dir.name) + suffix
        size_flag = "" if size == 28 else f"_{size}"
        for old in run_dir.glob(f"{FLAG}{size_flag}_test_*@{run}.csv"):
            log.info("replacing earlier evaluator CSV %s", old.name)
            old.unlink()
        paths.append(write_evaluator_csv(run_dir, result["labels"], result[key], size, run))
    return paths


def read_evaluator_csv(path: Path) -> dict[str, Any]:
    """Parse an evaluator CSV: name fields (flag, size, split, auc, acc, run) and the scores."""
    path = Path(path)
    match = _NAME.match(path.name)
    if match is None:
        raise BloodMNISTError(f"{path.name} is not named like a MedMNIST evaluator CSV")
    rows = np.loadtxt(path, delimiter=",", ndmin=2)
    order = np.argsort(rows[:, 0], kind="stable")  # the evaluator sorts by the index column
    return {
        "flag": match["flag"],
        "size": int(match["size"] or 28),
        "split": match["split"],
        "auc": float(match["auc"]),
        "acc": float(match["acc"]),
        "run": match["run"],
        "index": rows[order, 0].astype(np.int64),
        "scores": rows[order, 1:],
    }
