"""Bootstrap CIs, paired differences, McNemar and mean/std on fixed arrays with known answers."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy.stats import binom
from scipy.stats import bootstrap as scipy_bootstrap

from bloodmnist.evaluation.stats import (
    PROB_METRICS,
    MetricFn,
    _batched,
    _resample_values,
    bootstrap_ci,
    format_mean_std,
    mcnemar_exact,
    mean_std,
    paired_bootstrap_diff,
    seed_mean,
)


def _mean_metric(_y: np.ndarray, x: np.ndarray) -> float:
    return float(np.mean(x))


def _bernoulli(n: int, p: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < p).astype(np.float64)


def _outcomes(b: int, c: int, both: int = 3, neither: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Paired right/wrong vectors with b 'only A right' and c 'only B right' images."""
    a = [1] * b + [0] * c + [1] * both + [0] * neither
    bb = [0] * b + [1] * c + [1] * both + [0] * neither
    return np.array(a, bool), np.array(bb, bool)


@pytest.mark.parametrize(
    ("b", "c", "expected"),
    [
        (2, 8, 2 * (1 + 10 + 45) / 1024),  # 2 * P(X <= 2), X ~ Bin(10, 1/2)
        (0, 10, 2 / 1024),
        (5, 5, 1.0),  # balanced discordance: no evidence either way
        (0, 0, 1.0),  # no discordant pairs at all
        (1, 0, 1.0),
        (9, 1, 2 * 11 / 1024),
    ],
)
def test_mcnemar_exact_hand_computed(b: int, c: int, expected: float) -> None:
    res = mcnemar_exact(*_outcomes(b, c))
    assert res["b_only_a_correct"] == b and res["c_only_b_correct"] == c
    assert res["both_correct"] == 3 and res["both_wrong"] == 2
    assert res["statistic"] == min(b, c)
    assert res["p_value"] == pytest.approx(expected, rel=1e-12)


def test_mcnemar_matches_statsmodels_formula() -> None:
    """statsmodels' exact McNemar is min(1, 2 * Binom(b + c, 1/2).cdf(min(b, c)))."""
    for b, c in [(13, 27), (40, 41), (3, 0), (100, 70)]:
        expected = min(1.0, 2 * binom.cdf(min(b, c), b + c, 0.5))
        assert mcnemar_exact(*_outcomes(b, c))["p_value"] == pytest.approx(expected, rel=1e-9)


def test_mcnemar_rejects_unpaired() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        mcnemar_exact(np.ones(3, bool), np.ones(4, bool))


def test_bootstrap_is_seeded_and_reproducible() -> None:
    x = _bernoulli(300, 0.8)
    y = np.zeros_like(x)
    first = bootstrap_ci(_mean_metric, y, x, n_boot=500, seed=7)
    again = bootstrap_ci(_mean_metric, y, x, n_boot=500, seed=7)
    other = bootstrap_ci(_mean_metric, y, x, n_boot=500, seed=8)
    assert first == again
    assert (first["low"], first["high"]) != (other["low"], other["high"])
    assert first["point"] == pytest.approx(x.mean())
    assert first["low"] <= first["point"] <= first["high"]
    assert (first["n_boot"], first["seed"], first["n"], first["level"]) == (500, 7, 300, 0.95)


def test_bootstrap_width_matches_theory_and_shrinks_with_n() -> None:
    """For an accuracy of p on n images the 95% half-width is about 1.96 sqrt(p(1-p)/n)."""
    widths = []
    for n in (400, 1600, 6400):
        x = _bernoulli(n, 0.9, seed=n)
        ci = bootstrap_ci(_mean_metric, np.zeros(n), x, n_boot=2000, seed=0)
        half = (ci["high"] - ci["low"]) / 2
        p = x.mean()
        assert half == pytest.approx(1.96 * math.sqrt(p * (1 - p) / n), rel=0.15)
        widths.append(half)
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] == pytest.approx(4.0, rel=0.2)  # 1/sqrt(n) scaling


def test_bootstrap_agrees_with_scipy_percentile() -> None:
    x = _bernoulli(500, 0.7, seed=3)
    ours = bootstrap_ci(_mean_metric, np.zeros_like(x), x, n_boot=4000, seed=1)
    ref = scipy_bootstrap(
        (x,), np.mean, n_resamples=4000, method="percentile", random_state=1
    ).confidence_interval
    assert ours["low"] == pytest.approx(ref.low, abs=0.01)
    assert ours["high"] == pytest.approx(ref.high, abs=0.01)


def test_bootstrap_on_probabilities_uses_the_metric() -> None:
    y = np.array([0, 1, 2, 0, 1, 2] * 20)
    probs = np.eye(3)[y] * 0.7 + 0.1  # all correct
    ci = bootstrap_ci(PROB_METRICS["acc"], y, probs, n_boot=50, seed=0)
    assert ci["point"] == ci["low"] == ci["high"] == 1.0
    auc = bootstrap_ci(PROB_METRICS["auc"], y, probs, n_boot=50, seed=0)
    assert auc["point"] == pytest.approx(1.0)


def test_bootstrap_takes_medmnist_shaped_labels() -> None:
    """(N, 1) labels, as MedMNIST files store them, give the same numbers as (N,): they once
    broadcast to an (N, N) comparison and a wrong accuracy."""
    y = np.array([0, 1, 2, 0, 1, 2] * 20)
    probs = np.eye(3)[y] * 0.7 + 0.1
    probs[:30] = np.eye(3)[(y[:30] + 1) % 3] * 0.7 + 0.1  # 30 of 120 wrong
    flat = bootstrap_ci(PROB_METRICS["acc"], y, probs, n_boot=50, seed=0)
    column = bootstrap_ci(PROB_METRICS["acc"], y[:, None], probs, n_boot=50, seed=0)
    assert flat == column and column["point"] == 0.75
    diff = paired_bootstrap_diff(PROB_METRICS["acc"], y[:, None], probs, np.eye(3)[y], n_boot=50)
    assert diff["diff"] == pytest.approx(-0.25)
    with pytest.raises(ValueError, match="differ in length"):  # (N, 2): not one label each
        bootstrap_ci(PROB_METRICS["acc"], np.zeros((120, 2)), probs, n_boot=5)


def test_paired_diff_is_zero_for_identical_and_narrower_than_unpaired() -> None:
    n = 1000
    base = _bernoulli(n, 0.85, seed=11)
    same = paired_bootstrap_diff(_mean_metric, np.zeros(n), base, base, n_boot=300, seed=0)
    assert same["diff"] == same["low"] == same["high"] == 0.0
    # B = A with 30 errors fixed: strongly correlated, so the paired CI is tight and above 0
    better = base.copy()
    better[np.flatnonzero(base == 0)[:30]] = 1.0
    res = paired_bootstrap_diff(_mean_metric, np.zeros(n), better, base, n_boot=1000, seed=0)
    assert res["diff"] == pytest.approx(0.03)
    assert 0.0 < res["low"] <= 0.03 <= res["high"]
    assert res["share_diff_le_0"] == 0.0
    unpaired = bootstrap_ci(_mean_metric, np.zeros(n), base, n_boot=1000, seed=0)
    assert res["high"] - res["low"] < (unpaired["high"] - unpaired["low"]) / 2


def test_mean_std_matches_numpy_sample_std() -> None:
    vals = [0.91, 0.935, 0.902]
    stat = mean_std(vals)
    assert stat["mean"] == pytest.approx(np.mean(vals))
    assert stat["std"] == pytest.approx(np.std(vals, ddof=1))
    assert stat["n"] == 3
    assert mean_std([0.5, None, 0.7]) == pytest.approx(
        {"mean": 0.6, "std": np.std([0.5, 0.7], ddof=1), "n": 2}
    )
    assert mean_std([0.5]) == {"mean": 0.5, "std": None, "n": 1}
    assert mean_std([None]) == {"mean": None, "std": None, "n": 0}
    assert format_mean_std(stat) == f"{np.mean(vals):.4f} ± {np.std(vals, ddof=1):.4f}"
    assert format_mean_std(mean_std([0.5])) == "0.5000 ± —"


def test_seed_mean_averages_per_seed_metric() -> None:
    y = np.array([0, 1, 1, 0])
    right = np.eye(2)[y]
    wrong = np.eye(2)[1 - y]
    stacked = np.stack([right, wrong, right], axis=1)  # (N, S, C): accuracies 1, 0, 1
    assert seed_mean(PROB_METRICS["acc"])(y, stacked) == pytest.approx(2 / 3)


# --- Vectorised bootstrap metrics: the same values as one scikit-learn call per resample -------


def _loop(fn: MetricFn) -> MetricFn:
    """The same metric in a wrapper the bootstrap has no vectorised form for: one call per
    resample, as before the vectorisation."""
    return lambda y, p: fn(y, p)


def _tied_probs(n: int, seeds: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities with many ties and absent classes: class 3 is predicted but
    never true, class 5 neither true nor predicted, class 4 (2 images) missing from ~13% of
    the resamples."""
    rng = np.random.default_rng(seed)
    y = rng.choice([0, 1, 2], size=n, p=[0.5, 0.3, 0.2])
    y[:2] = 4
    shape = (n, 6) if seeds is None else (n, seeds, 6)
    probs = np.round(rng.random(shape), 1)  # 11 distinct values: ties within every column
    probs[..., 5] = 0.0  # never the argmax, and all tied
    onehot = np.eye(6)[y] if seeds is None else np.eye(6)[y][:, None, :]
    return y, (probs + 0.4 * onehot).astype(np.float32)


@pytest.mark.parametrize("name", ["acc", "macro_f1", "auc"])
@pytest.mark.parametrize("seeds", [None, 2], ids=["plain", "seed_mean"])
def test_vectorised_metrics_equal_the_per_resample_loop(name: str, seeds: int | None) -> None:
    y, probs = _tied_probs(40, seeds, seed=5)
    fn = PROB_METRICS[name] if seeds is None else seed_mean(PROB_METRICS[name])
    assert _batched(fn, y, probs) is not None  # the fast path is the one under test
    assert _batched(_loop(fn), y, probs) is None
    # 120 resamples: one full chunk of 100 and a partial one
    (fast,) = _resample_values(fn, y, [probs], 120, 9)
    (slow,) = _resample_values(_loop(fn), y, [probs], 120, 9)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)  # NaN where both are undefined
    assert len(np.unique(slow)) > 5
    rng = np.random.default_rng(9)
    draws = [rng.integers(0, 40, size=40) for _ in range(120)]
    assert sum(not np.any(y[d] == 4) for d in draws) >= 5  # absent-class resamples were tested
    if seeds is None:  # the public functions on top (2 loop calls per paired resample: fewer)
        ci, ref = bootstrap_ci(fn, y, probs, 40, 9), bootstrap_ci(_loop(fn), y, probs, 40, 9)
        assert ci == pytest.approx(ref, rel=0, abs=1e-12)
        other = probs[::-1].copy()
        diff = paired_bootstrap_diff(fn, y, probs, other, 40, 9)
        ref_diff = paired_bootstrap_diff(_loop(fn), y, probs, other, 40, 9)
        assert diff == pytest.approx(ref_diff, rel=0, abs=1e-12)


def test_vectorised_auc_skips_undefined_classes_like_medmnist_auc() -> None:
    y, probs = _tied_probs(30, None, seed=2)
    probs[7, 2] = np.nan  # resamples that draw image 7 have no class-2 AUC
    fn = PROB_METRICS["auc"]
    (fast,) = _resample_values(fn, y, [probs], 100, 1)
    (slow,) = _resample_values(_loop(fn), y, [probs], 100, 1)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)
    one_class = np.zeros(30, dtype=np.int64)  # no class has both positives and negatives
    (undefined,) = _resample_values(fn, one_class, [probs], 20, 1)
    assert np.isnan(undefined).all()
    ci = bootstrap_ci(fn, one_class, probs, 20, 1)
    assert ci["point"] is None and ci["low"] is None and ci["high"] is None


def test_vectorised_auc_bootstrap_is_much_faster_than_the_loop() -> None:
    """1000 AUC resamples of a BloodMNIST-sized test set (3421 x 8) cost less CPU time than 100
    resamples scored one scikit-learn call at a time (measured ~20-50x faster per resample)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 8, size=3421)
    logits = rng.normal(size=(3421, 8)) + 3 * np.eye(8)[y]
    probs = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    auc = PROB_METRICS["auc"]
    start = time.process_time()
    fast = bootstrap_ci(auc, y, probs, n_boot=1000, seed=0)
    fast_s = time.process_time() - start
    start = time.process_time()
    slow = bootstrap_ci(_loop(auc), y, probs, n_boot=100, seed=0)
    slow_s = time.process_time() - start
    assert fast_s < slow_s, f"vectorised 1000 resamples {fast_s:.2f} s, loop 100 {slow_s:.2f} s"
    assert fast["point"] == slow["point"] and 0.9 < fast["low"] < fast["high"] < 1.0
