"""Uncertainty of test metrics: seeded bootstrap CIs, paired differences, McNemar, mean/std.

Pure numpy/scipy functions. Every bootstrap draws its resamples from
``numpy.random.default_rng(seed)`` one resample at a time, so the same inputs and seed give the
same interval on any machine, and the memory use does not grow with ``n_boot``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.stats import binomtest

from bloodmnist.evaluation.metrics import macro_f1, medmnist_auc

#: A metric on one (resampled) set of test images: (labels, per-image scores) -> number.
MetricFn = Callable[[np.ndarray, np.ndarray], float]
DEFAULT_N_BOOT = 1000
DEFAULT_BOOT_SEED = 0


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
    y, p = np.asarray(y), np.asarray(p)
    n = _check_lengths(y, p)
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for i in range(n_boot):
        idx = rng.integers(0, n, size=n)
        stats[i] = metric_fn(y[idx], p[idx])
    low, high = _percentile_interval(stats, level)
    return {
        "point": _finite_or_none(metric_fn(y, p)),
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
    y, p_a, p_b = np.asarray(y), np.asarray(p_a), np.asarray(p_b)
    n = _check_lengths(y, p_a, p_b)
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for i in range(n_boot):
        idx = rng.integers(0, n, size=n)
        diffs[i] = metric_fn(y[idx], p_a[idx]) - metric_fn(y[idx], p_b[idx])
    low, high = _percentile_interval(diffs, level)
    ok = diffs[np.isfinite(diffs)]
    return {
        "a": _finite_or_none(metric_fn(y, p_a)),
        "b": _finite_or_none(metric_fn(y, p_b)),
        "diff": _finite_or_none(metric_fn(y, p_a) - metric_fn(y, p_b)),
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


def seed_mean(fn: MetricFn) -> MetricFn:
    """Lift a metric on (N, C) probabilities to (N, S, C): the mean of the S seeds' values."""

    def mean_over_seeds(y: np.ndarray, probs: np.ndarray) -> float:
        return float(np.mean([fn(y, probs[:, s]) for s in range(probs.shape[1])]))

    return mean_over_seeds
