"""Classification metrics in plain numpy (no torch), checked against scikit-learn in the tests.

All functions take integer labels ``0..num_classes-1`` and, where needed, an ``(N, C)`` array of
class probabilities. They are deterministic and cheap, so they can run on every epoch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: Probabilities are clipped here before the log so one confident mistake cannot give ``inf``.
NLL_EPS = 1e-12


def _as_labels(y: np.ndarray, name: str) -> np.ndarray:
    """Return ``y`` as a 1-D int64 array, rejecting floats that are not whole numbers."""
    arr = np.asarray(y).reshape(-1)  # MedMNIST stores labels as (N, 1)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError(f"{name} must hold integer class labels")
    return arr.astype(np.int64)


def _check_pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t, p = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels but y_pred has {p.size}")
    if t.size == 0:
        raise ValueError("metrics need at least one sample")
    return t, p


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``cm[true, pred]`` as an int64 ``(num_classes, num_classes)`` array."""
    t, p = _check_pair(y_true, y_pred)
    for arr, name in ((t, "y_true"), (p, "y_pred")):
        if arr.min() < 0 or arr.max() >= num_classes:
            raise ValueError(f"{name} has labels outside 0..{num_classes - 1}")
    # One bincount over the flattened (true, pred) index is much faster than a Python loop.
    flat = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of samples whose predicted label equals the true label."""
    t, p = _check_pair(y_true, y_pred)
    return float(np.mean(t == p))


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 0.0 where ``den == 0`` (sklearn's ``zero_division=0``)."""
    num = num.astype(np.float64)
    den = den.astype(np.float64)
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den != 0)
    return out


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 (float64) and support (int64) per class from a confusion matrix."""
    cm = np.asarray(cm)
    tp = np.diag(cm)
    support = cm.sum(axis=1)  # rows are true classes
    predicted = cm.sum(axis=0)
    # F1 as 2TP / (2TP + FP + FN), the same expression sklearn uses, so ties to 1e-12 hold.
    return {
        "precision": _safe_divide(tp, predicted),
        "recall": _safe_divide(tp, support),
        "f1": _safe_divide(2 * tp, support + predicted),
        "support": support.astype(np.int64),
    }


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Unweighted mean F1 over classes that occur in ``y_true`` or ``y_pred``.

    Like ``sklearn.metrics.f1_score(average="macro")``: a class that is neither present nor
    predicted has no defined F1 and is left out instead of dragging the mean down.
    """
    cm = confusion_matrix(y_true, y_pred, num_classes)
    f1 = per_class_scores(cm)["f1"]
    seen = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    return float(f1[seen].mean())


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with tied values sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # Start index of each run of equal values in the sorted array.
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], xs.size]
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_auc_ovr(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC-AUC per class via the Mann-Whitney U statistic.

    AUC = (sum of positive ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg), with average ranks for
    ties, which equals the trapezoidal ROC area. NaN where a class has no positives or no
    negatives, since the ROC curve is undefined there.
    """
    probs = np.asarray(probs, dtype=np.float64)
    t = _as_labels(y_true, "y_true")
    if probs.ndim != 2 or probs.shape[0] != t.size:
        raise ValueError(f"probs must have shape ({t.size}, C), got {probs.shape}")
    aucs = np.full(probs.shape[1], np.nan)
    for c in range(probs.shape[1]):
        pos = t == c
        n_pos = int(pos.sum())
        n_neg = t.size - n_pos
        if n_pos == 0 or n_neg == 0:
            continue
        ranks = _average_ranks(probs[:, c])
        aucs[c] = (ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
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
    t = _as_labels(y_true, "y_true")
    k = len(class_names)
    if probs.ndim != 2 or probs.shape != (t.size, k):
        raise ValueError(f"probs must have shape ({t.size}, {k}), got {probs.shape}")
    pred = probs.argmax(axis=1)
    cm = confusion_matrix(t, pred, k)
    scores = per_class_scores(cm)
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
