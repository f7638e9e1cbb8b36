"""Uncertainty of test metrics: seeded bootstrap CIs, paired differences, McNemar, mean/std.

Pure numpy/scipy functions. Every bootstrap draws its resamples from
``numpy.random.default_rng(seed)`` one resample at a time, so the same inputs and seed give the
same interval on any machine. The bootstrap metrics (accuracy, macro-F1, MedMNIST AUC and their
seed means) score a chunk of resamples at once from the resamples' count vectors, because one
scikit-learn call per resample made a 3-seed study's aggregation take ~10 minutes; any other
metric is called once per resample. Memory stays bounded by the chunk, not by ``n_boot``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import binomtest

from bloodmnist.evaluation.metrics import as_labels, macro_f1, medmnist_auc

#: A metric on one (resampled) set of test images: (labels, per-image scores) -> number.
MetricFn = Callable[[np.ndarray, np.ndarray], float]
DEFAULT_N_BOOT = 1000
DEFAULT_BOOT_SEED = 0
#: Resamples scored together by a vectorised metric (memory ~ chunk x N floats per array).
RESAMPLE_CHUNK = 100
#: A metric on a chunk of resamples: counts (B, N) (times each image was drawn) -> values (B,).
BatchFn = Callable[[np.ndarray], np.ndarray]


def _finite_or_none(x: float) -> float | None:
    """JSON has no NaN: undefined values become None."""
    x = float(x)
    return x if math.isfinite(x) else None


def _check_lengths(y: np.ndarray, *arrays: np.ndarray) -> int:
    n = len(y)
    if n == 0:
        raise ValueError("bootstrap needs at least one test image")
    for arr in arrays:
        if len(arr) != n:
            raise ValueError(f"arrays differ in length along axis 0: {len(arr)} vs {n}")
    return n


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float | None, float | None]:
    """Percentile interval ignoring resamples where the metric was undefined (NaN)."""
    ok = values[np.isfinite(values)]
    if ok.size == 0:
        return None, None
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(ok, [tail, 100 - tail])
    return float(low), float(high)


def _resample_values(
    metric_fn: MetricFn, y: np.ndarray, ps: Sequence[np.ndarray], n_boot: int, seed: int
) -> list[np.ndarray]:
    """``metric_fn(y, p)`` for every ``p`` in ``ps`` on the same ``n_boot`` seeded resamples.

    Resample i is ``rng.integers(0, n, size=n)``, drawn one at a time as always, so an interval
    does not depend on whether the metric has a vectorised form (up to float rounding).
    """
    n = len(y)
    batched = [_batched(metric_fn, y, p) for p in ps]
    out = [np.empty(n_boot) for _ in ps]
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, RESAMPLE_CHUNK):
        stop = min(start + RESAMPLE_CHUNK, n_boot)
        idxs = [rng.integers(0, n, size=n) for _ in range(start, stop)]
        counts = None
        for values, p, batch in zip(out, ps, batched, strict=True):
            if batch is None:
                values[start:stop] = [metric_fn(y[idx], p[idx]) for idx in idxs]
                continue
            if counts is None:  # integer counts as floats: exact, and BLAS-fast in matmuls
                counts = np.stack([np.bincount(idx, minlength=n) for idx in idxs]).astype(float)
            values[start:stop] = batch(counts)
    return out


def bootstrap_ci(
    metric_fn: MetricFn,
    y: np.ndarray,
    p: np.ndarray,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = DEFAULT_BOOT_SEED,
    level: float = 0.95,
) -> dict[str, Any]:
    """Percentile bootstrap CI of ``metric_fn(y, p)`` resampling test images with replacement.

    ``y`` and ``p`` are indexed together along axis 0 (``p`` may be (N,), (N, C) or (N, S, C)).
    Returns point (on the full set), low, high, level, n_boot, seed and n.
    """
    y, p = as_labels(y, "labels"), np.asarray(p)  # MedMNIST's (N, 1) too
    n = _check_lengths(y, p)
    point = metric_fn(y, p)  # first, so bad input fails before the resampling
    (stats,) = _resample_values(metric_fn, y, [p], n_boot, seed)
    low, high = _percentile_interval(stats, level)
    return {
        "point": _finite_or_none(point),
        "low": low,
        "high": high,
        "level": level,
        "n_boot": n_boot,
        "seed": seed,
        "n": n,
    }


def paired_bootstrap_diff(
    metric_fn: MetricFn,
    y: np.ndarray,
    p_a: np.ndarray,
    p_b: np.ndarray,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = DEFAULT_BOOT_SEED,
    level: float = 0.95,
) -> dict[str, Any]:
    """CI of ``metric(a) - metric(b)`` where both are scored on the SAME resampled images.

    Pairing removes the image-sampling noise the two settings share, so the interval is much
    narrower than comparing two independent CIs. Also returns the share of resamples where the
    difference is <= 0 (a one-sided bootstrap p-value for "a is better").
    """
    y, p_a, p_b = as_labels(y, "labels"), np.asarray(p_a), np.asarray(p_b)
    n = _check_lengths(y, p_a, p_b)
    a, b = metric_fn(y, p_a), metric_fn(y, p_b)
    values_a, values_b = _resample_values(metric_fn, y, [p_a, p_b], n_boot, seed)
    diffs = values_a - values_b
    low, high = _percentile_interval(diffs, level)
    ok = diffs[np.isfinite(diffs)]
    return {
        "a": _finite_or_none(a),
        "b": _finite_or_none(b),
        "diff": _finite_or_none(a - b),
        "low": low,
        "high": high,
        "share_diff_le_0": float(np.mean(ok <= 0)) if ok.size else None,
        "level": level,
        "n_boot": n_boot,
        "seed": seed,
        "n": n,
    }


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, Any]:
    """McNemar's exact test on paired right/wrong outcomes of two classifiers.

    b = images only A gets right, c = images only B gets right. Under H0 (equal error rates)
    b ~ Binomial(b + c, 1/2); the p-value is the two-sided exact binomial test, which equals
    statsmodels' ``mcnemar(table, exact=True)``. With no discordant pairs p = 1.
    """
    a = np.asarray(correct_a, dtype=bool).reshape(-1)
    b_ = np.asarray(correct_b, dtype=bool).reshape(-1)
    if a.shape != b_.shape:
        raise ValueError(f"paired outcomes differ in length: {a.size} vs {b_.size}")
    b = int(np.sum(a & ~b_))
    c = int(np.sum(~a & b_))
    p_value = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return {
        "b_only_a_correct": b,
        "c_only_b_correct": c,
        "both_correct": int(np.sum(a & b_)),
        "both_wrong": int(np.sum(~a & ~b_)),
        "statistic": min(b, c),
        "p_value": p_value,
    }


def mean_std(values: Sequence[float | None], ddof: int = 1) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof=1) over seeds; None-valued entries are skipped.

    Sample std (not population) because the seeds are a sample of possible training runs; with a
    single value the std is undefined (None).
    """
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if arr.size == 0:
        return {"mean": None, "std": None, "n": 0}
    std = float(np.std(arr, ddof=ddof)) if arr.size > ddof else None
    return {"mean": float(np.mean(arr)), "std": std, "n": int(arr.size)}


def format_mean_std(stat: dict[str, Any], digits: int = 4) -> str:
    """``0.9712 ± 0.0021`` (``± —`` when the std is undefined); ``—`` when there is no mean."""
    if stat.get("mean") is None:
        return "—"
    std = stat.get("std")
    return f"{stat['mean']:.{digits}f} ± " + ("—" if std is None else f"{std:.{digits}f}")


def _acc(y: np.ndarray, probs: np.ndarray) -> float:
    return float(np.mean(probs.argmax(axis=1) == y))


def _macro_f1(y: np.ndarray, probs: np.ndarray) -> float:
    return macro_f1(y, probs.argmax(axis=1), probs.shape[1])


#: Metrics on (labels (N,), probabilities (N, C)) for the bootstrap, named as in summary.json.
PROB_METRICS: dict[str, MetricFn] = {"acc": _acc, "macro_f1": _macro_f1, "auc": medmnist_auc}


@dataclass(frozen=True)
class SeedMean:
    """``fn`` on (N, S, C): the mean over seeds (a class, so the bootstrap can vectorise ``fn``)."""

    fn: MetricFn

    def __call__(self, y: np.ndarray, probs: np.ndarray) -> float:
        return float(np.mean([self.fn(y, probs[:, s]) for s in range(probs.shape[1])]))


def seed_mean(fn: MetricFn) -> MetricFn:
    """Lift a metric on (N, C) probabilities to (N, S, C): the mean of the S seeds' values."""
    return SeedMean(fn)


# --- Vectorised bootstrap metrics: a resample is its count vector w (how often each image was
# drawn); every count a metric needs is then a weighted sum, so a chunk of resamples is a few
# matrix products. Counts are integers, exact in float64: only the final ratios round.


def _acc_batch(y: np.ndarray, probs: np.ndarray) -> BatchFn:
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    return lambda w: (w @ correct) / w.shape[1]


def _macro_f1_batch(y: np.ndarray, probs: np.ndarray) -> BatchFn:
    """Same convention as metrics.macro_f1: F1 = 2TP / (2TP + FP + FN), averaged over the
    classes present in the (resampled) truth or prediction; absent classes are left out."""
    classes = np.arange(probs.shape[1])
    true1h = (y[:, None] == classes).astype(np.float64)
    pred1h = (probs.argmax(axis=1)[:, None] == classes).astype(np.float64)
    hit1h = true1h * pred1h

    def batch(w: np.ndarray) -> np.ndarray:
        tp = w @ hit1h
        denom = w @ true1h + w @ pred1h  # support + predicted = 2TP + FP + FN
        present = denom > 0
        f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=present)
        return f1.sum(axis=1) / present.sum(axis=1)

    return batch


def _auc_column(positive: np.ndarray, scores: np.ndarray) -> BatchFn:
    """One-vs-rest AUC of one class on weighted resamples: Mann-Whitney U / (n+ n-), ties 1/2
    (the area of scikit-learn's trapezoidal ROC). NaN where the resample has no positive or no
    negative, or draws a non-finite score (metrics.roc_auc_ovr's undefined cases)."""
    finite = np.isfinite(scores)
    bad = np.flatnonzero(~finite)
    neg = np.flatnonzero(finite & ~positive)
    neg = neg[np.argsort(scores[neg], kind="stable")]  # sorted once for all resamples
    pos = np.flatnonzero(finite & positive)
    # Each positive outranks the negatives before `lo` and ties with those in [lo, hi).
    lo = np.searchsorted(scores[neg], scores[pos], side="left")
    hi = np.searchsorted(scores[neg], scores[pos], side="right")

    def column(wt: np.ndarray) -> np.ndarray:  # wt: counts transposed, (N, B)
        cum = np.zeros((neg.size + 1, wt.shape[1]))  # cum[k]: weight of the k lowest negatives
        np.cumsum(wt[neg], axis=0, out=cum[1:])
        w_pos = wt[pos]
        u = 0.5 * np.sum(w_pos * (cum[lo] + cum[hi]), axis=0)  # below + 1/2 tied
        n_pos, n_neg = w_pos.sum(axis=0), cum[-1]
        defined = (n_pos > 0) & (n_neg > 0)
        if bad.size:
            defined &= wt[bad].sum(axis=0) == 0
        return np.divide(u, n_pos * n_neg, out=np.full(wt.shape[1], np.nan), where=defined)

    return column


def _auc_batch(y: np.ndarray, probs: np.ndarray) -> BatchFn:
    """metrics.medmnist_auc: mean of the defined per-class AUCs, NaN when none is defined."""
    probs = np.asarray(probs, dtype=np.float64)
    columns = [_auc_column(y == c, probs[:, c]) for c in range(probs.shape[1])]

    def batch(w: np.ndarray) -> np.ndarray:
        wt = np.ascontiguousarray(w.T)
        aucs = np.stack([col(wt) for col in columns], axis=1)
        ok = np.isfinite(aucs)
        count = ok.sum(axis=1)
        total = np.where(ok, aucs, 0.0).sum(axis=1)
        return np.divide(total, count, out=np.full(len(w), np.nan), where=count > 0)

    return batch


#: Vectorised forms of PROB_METRICS, matched by identity (metric functions need not hash).
_BATCHED: tuple[tuple[MetricFn, Callable[[np.ndarray, np.ndarray], BatchFn]], ...] = (
    (_acc, _acc_batch),
    (_macro_f1, _macro_f1_batch),
    (medmnist_auc, _auc_batch),
)


def _batched(metric_fn: MetricFn, y: np.ndarray, p: np.ndarray) -> BatchFn | None:
    """The vectorised form of ``metric_fn`` on these arrays, or None: then the loop runs."""
    if y.ndim != 1:
        return None
    if isinstance(metric_fn, SeedMean):
        if p.ndim != 3 or p.shape[1] == 0:
            return None
        per_seed = [_batched(metric_fn.fn, y, p[:, s]) for s in range(p.shape[1])]
        if any(b is None for b in per_seed):
            return None
        return lambda w: np.mean([b(w) for b in per_seed], axis=0)
    make = next((m for f, m in _BATCHED if f is metric_fn), None)
    return make(y, p) if make is not None and p.ndim == 2 else None
