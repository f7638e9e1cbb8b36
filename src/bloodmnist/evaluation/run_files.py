"""Read the files a training run leaves in its folder, with one-line errors for missing ones.

Shared by the reports (figures, Excel, HTML), `study` and `compare`: all see the same data.
"""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from bloodmnist import CLASS_NAMES
from bloodmnist.atomic import read_json
from bloodmnist.errors import BloodMNISTError
from bloodmnist.evaluation.calibration import (
    apply_temperature,
    calibration_metrics,
    logits_from_probs,
)

REQUIRED_FILES = ("summary.json", "history.csv", "predictions.npz")
PREDICTION_KEYS = ("test_labels", "test_probs", "test_probs_tta")
FIGURES_DIR = "figures"


#: The reference's 7 views: the mode of runs from before eval.tta_mode existed.
REFERENCE_TTA = "reference7"
#: The TTA modes. A run reports its own mode as *_tta and the others as *_tta_<mode>, so that
#: all are on record and the mode can be chosen on validation.
TTA_MODES = (REFERENCE_TTA, "dihedral8", "dihedral16", "dihedral24")
#: The modes every run reports beside its own (`eval.compare_tta`): the two base modes, 15 views.
#: All four would be 55 views per image, ~25 minutes more for a reference run on a 2-core CPU;
#: `bloodmnist evaluate --all-tta` scores every mode when a recipe's mode is being chosen.
COMPARED_TTA = (REFERENCE_TTA, "dihedral8")


def require_file(run_dir: Path, name: str) -> Path:
    """Path of ``run_dir/name``, or a BloodMNISTError naming the missing file."""
    path = Path(run_dir) / name
    if not path.is_file():
        raise BloodMNISTError(
            f"run folder {run_dir} has no {name}; reports need a finished (or evaluated) run"
        )
    return path


def check_run_dir(run_dir: Path) -> None:
    """Fail early, before any output is written, if a required run file is missing."""
    if not Path(run_dir).is_dir():
        raise BloodMNISTError(f"run folder {run_dir} does not exist")
    for name in REQUIRED_FILES:
        require_file(run_dir, name)


def load_summary(run_dir: Path) -> dict[str, Any]:
    """The run's summary.json as a dict."""
    return read_json(require_file(run_dir, "summary.json"))


def joint_train_on(summaries: list[dict[str, Any]]) -> str:
    """ "train+val" when any of the runs trained on the validation images (their validation
    numbers, and any mean of them, are then not held out), else "train"."""
    return "train+val" if any(s.get("train_on") == "train+val" for s in summaries) else "train"


def load_manifest(run_dir: Path) -> dict[str, Any]:
    """manifest.json as a dict; optional, so an empty dict when absent."""
    path = Path(run_dir) / "manifest.json"
    return read_json(path) if path.is_file() else {}


def parse_number(text: str) -> int | float | str:
    """``"3"`` -> 3, ``"0.5"`` -> 0.5, anything else (e.g. empty) stays a string."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def load_history(run_dir: Path) -> list[dict[str, int | float | str]]:
    """history.csv rows with numeric cells converted to int/float."""
    path = require_file(run_dir, "history.csv")
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: parse_number((v or "").strip()) for k, v in row.items()} for row in rows]


def history_columns(history: list[dict[str, Any]], run_dir: Path) -> list[str]:
    """Column names in file order (also for a history with a header but no rows)."""
    if history:
        return list(history[0])
    with require_file(run_dir, "history.csv").open(newline="", encoding="utf-8") as fh:
        return next(csv.reader(fh), [])


def load_predictions(run_dir: Path) -> dict[str, np.ndarray]:
    """predictions.npz as a dict of arrays; checks the keys every report needs."""
    path = require_file(run_dir, "predictions.npz")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise BloodMNISTError(f"{path} is not a readable .npz file: {exc}") from exc
    missing = [key for key in PREDICTION_KEYS if key not in data]
    if missing:
        raise BloodMNISTError(f"{path} lacks array(s) {', '.join(missing)}")
    problem = _inconsistency(data)
    if problem:  # before any report file is rewritten from it
        raise BloodMNISTError(f"{path} does not hold one prediction per image: {problem}")
    return data


def _inconsistency(data: dict[str, np.ndarray]) -> str | None:
    """What does not fit among the labels, probability arrays and class names, or None."""
    labels = data["test_labels"].reshape(-1)
    n = len(labels)
    probs = {k: v for k, v in data.items() if k.startswith(("test_probs", "val_probs"))}
    test = {k: v for k, v in probs.items() if k.startswith("test_")}
    shapes = {v.shape for v in test.values()}
    if len(shapes) != 1 or any(len(s) != 2 or s[0] != n for s in shapes):
        return f"{n} test labels, test probabilities of shapes {sorted(map(str, shapes))}"
    classes = next(iter(shapes))[1]
    names = data.get("class_names")
    if names is not None and len(names) != classes:
        return f"{len(names)} class names for {classes} probability columns"
    if any(v.ndim != 2 or v.shape[1] != classes for v in probs.values()):
        return f"validation probabilities without {classes} columns"
    if n and (labels.min() < 0 or labels.max() >= classes):
        return f"test labels outside 0..{classes - 1}"
    return None


def class_names(preds: dict[str, np.ndarray]) -> list[str]:
    """Class names stored with the predictions, falling back to the package's label order."""
    names = preds.get("class_names")
    return [str(n) for n in names] if names is not None else list(CLASS_NAMES)


def load_test_metrics(summary: dict[str, Any], preds: dict[str, np.ndarray], tta: bool) -> dict:
    """Full test metrics from summary ("test"/"test_tta"), recomputed if the summary lacks them."""
    key = "test_tta" if tta else "test"
    stored = summary.get(key)
    if isinstance(stored, dict) and "per_class" in stored and "confusion" in stored:
        return stored
    # imported here, not above: `export` uses this module's names and never needs scikit-learn
    from bloodmnist.evaluation.metrics import compute_metrics

    probs = preds["test_probs_tta" if tta else "test_probs"]
    return compute_metrics(preds["test_labels"], probs, class_names(preds))


def report_metrics(
    summary: dict[str, Any], preds: dict[str, np.ndarray]
) -> tuple[dict, dict | None]:
    """(plain, TTA) test metrics for a report; TTA is None for a run without it (its
    predictions.npz repeats the plain probabilities under the TTA key)."""
    plain = load_test_metrics(summary, preds, tta=False)
    return plain, load_test_metrics(summary, preds, tta=True) if tta_was_run(summary) else None


def is_from_scratch(summary: dict[str, Any]) -> bool:
    """True when the summary says no pretrained weights were used."""
    value = summary.get("pretrained")
    if value is None or value is False:
        return True
    return str(value).strip().lower() in {"none", "false", "no", "", "scratch", "from_scratch"}


def tta_was_run(summary: dict[str, Any]) -> bool:
    """predictions.npz repeats the plain probabilities as TTA when TTA was off; the summary says."""
    return summary.get("test_acc_tta", 0.0) is not None


def tta_mode_of(summary: dict[str, Any]) -> str:
    """A run's own TTA mode; runs from before `tta_mode` was recorded used the reference's 7."""
    return summary.get("tta_mode") or REFERENCE_TTA


def tta_probs(
    summary: dict[str, Any], preds: dict[str, np.ndarray], mode: str
) -> np.ndarray | None:
    """A run's test probabilities under TTA `mode`: its own mode's (`test_probs_tta`) or the
    other one's, reported beside it (`test_probs_tta_<mode>`); None where the run has neither."""
    if not tta_was_run(summary):
        return None
    if tta_mode_of(summary) == mode:
        return preds["test_probs_tta"]
    return preds.get(f"test_probs_tta_{mode}")


def calibration_variants(
    summary: dict[str, Any], preds: dict[str, np.ndarray]
) -> list[tuple[str, np.ndarray, float | None]]:
    """(label, test probabilities, fitted temperature or None) for plain and, if run, TTA."""
    out = [("plain", preds["test_probs"], summary.get("temperature"))]
    if tta_was_run(summary):
        out.append(("TTA", preds["test_probs_tta"], summary.get("temperature_tta")))
    return out


def calibration_rows(summary: dict[str, Any], preds: dict[str, np.ndarray]) -> list[list[Any]]:
    """Rows (variant, ECE, NLL, Brier, T, ECE/NLL/Brier after T) recomputed from predictions."""
    rows = []
    labels = preds["test_labels"]
    for name, probs, temp in calibration_variants(summary, preds):
        before = calibration_metrics(probs, labels)
        after = (
            calibration_metrics(apply_temperature(logits_from_probs(probs), temp), labels)
            if temp is not None
            else {}
        )
        rows.append(
            [name, before["ece"], before["nll"], before["brier"], temp]
            + [after.get(k) for k in ("ece", "nll", "brier")]
        )
    return rows


CALIBRATION_HEADER = (
    "variant",
    "ECE (15 bins)",
    "NLL",
    "Brier",
    "temperature",
    "ECE after T",
    "NLL after T",
    "Brier after T",
)
