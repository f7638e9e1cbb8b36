"""Classification metrics: scikit-learn's, plus the MedMNIST glue around them.

scikit-learn computes the confusion matrix, accuracy, precision/recall/F1 and the one-vs-rest
ROC-AUCs. What is ours: label checks (MedMNIST's (N, 1) labels, whole numbers only), the MedMNIST
AUC (the mean of the per-class one-vs-rest AUCs, where classes without positives or negatives
are skipped instead of failing the whole evaluation), clipped NLL and JSON-safe plain floats.
All functions take integer labels ``0..num_classes-1`` and, where needed, an ``(N, C)`` array of
class probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn import metrics as skm

from bloodmnist.evaluation.calibration import NLL_EPS


def as_labels(y: np.ndarray, name: str) -> np.ndarray:
    """Return ``y`` as a 1-D int64 array, rejecting floats that are not whole numbers."""
    arr = np.asarray(y).reshape(-1)  # MedMNIST stores labels as (N, 1)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError(f"{name} must hold integer class labels")
    return arr.astype(np.int64)


def _check_pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t, p = as_labels(y_true, "y_true"), as_labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels but y_pred has {p.size}")
    if t.size == 0:
        raise ValueError("metrics need at least one sample")
    return t, p


def _check_range(arr: np.ndarray, name: str, num_classes: int) -> None:
    # scikit-learn would silently drop labels outside `labels=`; a bad label is a bug here.
    if arr.min() < 0 or arr.max() >= num_classes:
        raise ValueError(f"{name} has labels outside 0..{num_classes - 1}")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``cm[true, pred]`` as an int64 ``(num_classes, num_classes)`` array."""
    t, p = _check_pair(y_true, y_pred)
    _check_range(t, "y_true", num_classes)
    _check_range(p, "y_pred", num_classes)
    return skm.confusion_matrix(t, p, labels=np.arange(num_classes)).astype(np.int64)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of samples whose predicted label equals the true label."""
    t, p = _check_pair(y_true, y_pred)
    return float(skm.accuracy_score(t, p))


def per_class_scores(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int
) -> dict[str, np.ndarray]:
    """Precision, recall, F1 (float64) and support (int64) for every class ``0..num_classes-1``;
    0.0 where a ratio is undefined (a class never predicted or never present)."""
    t, p = _check_pair(y_true, y_pred)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        t, p, labels=np.arange(num_classes), zero_division=0
    )
    return {
        "precision": precision.astype(np.float64),
        "recall": recall.astype(np.float64),
        "f1": f1.astype(np.float64),
        "support": support.astype(np.int64),
    }


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Unweighted mean F1 over the classes that occur in ``y_true`` or ``y_pred``.

    scikit-learn's default label set: a class that is neither present nor predicted has no
    defined F1 and is left out instead of dragging the mean down.
    """
    t, p = _check_pair(y_true, y_pred)
    _check_range(t, "y_true", num_classes)
    _check_range(p, "y_pred", num_classes)
    return float(skm.f1_score(t, p, average="macro", zero_division=0))


def roc_auc_ovr(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC-AUC per class (scikit-learn); NaN where a class has no positives or no
    negatives in ``y_true`` (the ROC curve is undefined there) or non-finite scores."""
    probs = np.asarray(probs, dtype=np.float64)
    t = as_labels(y_true, "y_true")
    if probs.ndim != 2 or probs.shape[0] != t.size:
        raise ValueError(f"probs must have shape ({t.size}, C), got {probs.shape}")
    onehot = (t[:, None] == np.arange(probs.shape[1])).astype(np.int64)
    positives = onehot.sum(axis=0)
    # Undefined, so NaN: no positives or no negatives, or non-finite scores (a diverged model's
    # NaN outputs must reach the divergence check, not fail inside scikit-learn).
    defined = (positives > 0) & (positives < t.size) & np.isfinite(probs).all(axis=0)
    cols = np.flatnonzero(defined)
    aucs = np.full(probs.shape[1], np.nan)
    if cols.size == 1:
        aucs[cols] = skm.roc_auc_score(onehot[:, cols[0]], probs[:, cols[0]])
    elif cols.size > 1:  # one call, the classes as a multilabel problem: one AUC per column
        aucs[cols] = skm.roc_auc_score(onehot[:, cols], probs[:, cols], average=None)
    return aucs


def medmnist_auc(y_true: np.ndarray, probs: np.ndarray) -> float:
    """MedMNIST multi-class AUC: mean of per-class one-vs-rest AUCs, undefined ones skipped."""
    aucs = roc_auc_ovr(y_true, probs)
    if np.all(np.isnan(aucs)):
        return float("nan")
    return float(np.nanmean(aucs))


def _json_float(x: float) -> float | None:
    """NaN becomes None so ``json.dump`` writes valid JSON (``null``) rather than ``NaN``."""
    x = float(x)
    return None if math.isnan(x) else x


def compute_metrics(
    y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str]
) -> dict[str, object]:
    """All test metrics as JSON-serialisable plain Python; predictions are ``argmax(probs)``.

    Keys: acc, macro_f1, auc, nll, confusion (list of lists, [true][pred]), per_class (list of
    dicts with class, precision, recall, f1, support, auc) and n. Undefined AUCs are None.
    """
    probs = np.asarray(probs, dtype=np.float64)
    t = as_labels(y_true, "y_true")
    k = len(class_names)
    if probs.ndim != 2 or probs.shape != (t.size, k):
        raise ValueError(f"probs must have shape ({t.size}, {k}), got {probs.shape}")
    pred = probs.argmax(axis=1)
    cm = confusion_matrix(t, pred, k)
    scores = per_class_scores(t, pred, k)
    aucs = roc_auc_ovr(t, probs)
    p_true = np.clip(probs[np.arange(t.size), t], NLL_EPS, 1.0)
    per_class = [
        {
            "class": str(name),
            "precision": float(scores["precision"][i]),
            "recall": float(scores["recall"][i]),
            "f1": float(scores["f1"][i]),
            "support": int(scores["support"][i]),
            "auc": _json_float(aucs[i]),
        }
        for i, name in enumerate(class_names)
    ]
    return {
        "acc": accuracy(t, pred),
        "macro_f1": macro_f1(t, pred, k),
        "auc": _json_float(medmnist_auc(t, probs)),
        "nll": float(np.mean(-np.log(p_true))),
        "confusion": cm.tolist(),
        "per_class": per_class,
        "n": int(t.size),
    }
