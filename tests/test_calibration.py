"""ECE, Brier, NLL, reliability bins and temperature scaling on fixed arrays with known values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, log_loss

from bloodmnist.evaluation.calibration import (
    TEMPERATURE_BOUNDS,
    apply_temperature,
    brier,
    calibrate,
    calibration_metrics,
    ece,
    fit_temperature,
    logits_from_probs,
    nll,
    reliability_bins,
)

# Four images, two classes; confidences 0.95, 0.85, 0.72, 0.61 (none on a 1/15 bin edge).
PROBS = np.array([[0.95, 0.05], [0.85, 0.15], [0.28, 0.72], [0.39, 0.61]])
LABELS = np.array([0, 1, 1, 0])  # right, wrong, right, wrong


def test_ece_hand_computed_15_bins() -> None:
    # every image in its own bin: mean of |correct - confidence|
    expected = (abs(1 - 0.95) + abs(0 - 0.85) + abs(1 - 0.72) + abs(0 - 0.61)) / 4
    assert expected == pytest.approx(0.4475)
    assert ece(PROBS, LABELS) == pytest.approx(0.4475, abs=1e-12)


def test_ece_hand_computed_shared_bin() -> None:
    # 2 bins: all four fall in (0.5, 1]: accuracy 0.5, mean confidence 0.7825
    assert ece(PROBS, LABELS, n_bins=2) == pytest.approx(0.7825 - 0.5, abs=1e-12)


def test_ece_zero_when_confidence_equals_accuracy() -> None:
    # 10 images at confidence 0.8, 8 of them right: perfectly calibrated
    probs = np.tile([0.8, 0.2], (10, 1))
    labels = np.array([0] * 8 + [1] * 2)
    assert ece(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_reliability_bins() -> None:
    bins = reliability_bins(PROBS, LABELS)
    assert bins["count"].sum() == 4 and len(bins["count"]) == 15
    assert np.flatnonzero(bins["count"]).tolist() == [9, 10, 12, 14]  # ceil(15 c) - 1
    assert bins["accuracy"][14] == 1.0 and bins["confidence"][14] == pytest.approx(0.95)
    assert np.isnan(bins["accuracy"][0])  # empty bins are NaN, not 0
    assert bins["edges"][0] == 0.0 and bins["edges"][-1] == 1.0


def test_brier_hand_computed_and_sklearn() -> None:
    probs = np.array([[1.0, 0.0], [0.5, 0.5]])
    assert brier(probs, np.array([0, 1])) == pytest.approx(0.25)
    # for two classes the multi-class Brier is twice sklearn's binary one
    assert brier(PROBS, LABELS) == pytest.approx(2 * brier_score_loss(LABELS, PROBS[:, 1]))


def test_nll_matches_sklearn_log_loss() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 8))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, 8, size=50)
    assert nll(probs, labels) == pytest.approx(log_loss(labels, probs, labels=range(8)))
    assert nll(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(-np.log(1e-12))


def test_calibration_metrics_keys() -> None:
    out = calibration_metrics(PROBS, LABELS)
    assert out == {
        "ece": ece(PROBS, LABELS),
        "nll": nll(PROBS, LABELS),
        "brier": brier(PROBS, LABELS),
    }


def _sample_labels(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One label per row drawn from that row's distribution (inverse CDF)."""
    u = rng.random((len(probs), 1))
    return (probs.cumsum(axis=1) < u).sum(axis=1).clip(0, probs.shape[1] - 1)


@pytest.mark.parametrize("true_t", [2.0, 1.0, 0.5])
def test_temperature_scaling_recovers_known_t(true_t: float) -> None:
    rng = np.random.default_rng(42)
    logits = rng.normal(0.0, 3.0, size=(20000, 8))
    labels = _sample_labels(apply_temperature(logits, true_t), rng)
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_t, rel=0.05)
    before = apply_temperature(logits, 1.0)
    after = apply_temperature(logits, fitted)
    assert nll(after, labels) <= nll(before, labels) + 1e-9
    if true_t != 1.0:
        assert ece(after, labels) < ece(before, labels)


def test_a_fit_stopped_at_its_bound_is_reported(caplog) -> None:
    """Validation all right (a small --subset): the NLL falls as T -> 0, so the fit ends on its
    lower bound; it says so, where a fit with a minimum inside says nothing."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 8, size=200)
    logits = rng.normal(0.0, 1.0, size=(200, 8))
    logits[np.arange(200), labels] += 10.0  # every argmax right
    with caplog.at_level("WARNING", logger="bloodmnist.evaluation.calibration"):
        t = fit_temperature(logits, labels)
    assert TEMPERATURE_BOUNDS[0] <= t < 0.5  # the NLL is flat near the bound: any T there
    assert "the temperature fit ran into its bound" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="bloodmnist.evaluation.calibration"):
        t = fit_temperature(logits, rng.integers(0, 8, size=200))  # labels unrelated: T -> inf
    assert t > 10 and "no better than chance" in caplog.text
    caplog.clear()
    logits = rng.normal(0.0, 3.0, size=(2000, 8))
    with caplog.at_level("WARNING", logger="bloodmnist.evaluation.calibration"):
        fit_temperature(logits, _sample_labels(apply_temperature(logits, 2.0), rng))
    assert caplog.text == ""  # a minimum inside: nothing to say


def test_temperature_from_probabilities() -> None:
    """log p are valid logits: T=1 gives p back, and fitting on them still finds the true T."""
    rng = np.random.default_rng(1)
    logits = rng.normal(0.0, 3.0, size=(20000, 8))
    labels = _sample_labels(apply_temperature(logits, 2.0), rng)
    probs = apply_temperature(logits, 1.0)
    assert apply_temperature(logits_from_probs(probs), 1.0) == pytest.approx(probs, abs=1e-12)
    assert fit_temperature(logits_from_probs(probs), labels) == pytest.approx(2.0, rel=0.05)
    scaled = apply_temperature(logits_from_probs(probs), 2.0)
    assert (scaled.argmax(axis=1) == probs.argmax(axis=1)).all()  # accuracy is unchanged


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match="probs must have shape"):
        ece(np.ones((3, 2)), np.array([0, 1]))


@pytest.mark.parametrize("temperature", [0.4, 1.0, 2.5, 4.0])
def test_calibrate_probs_equals_scaled_logits(temperature: float) -> None:
    """calibrate(softmax(z), T) == softmax(z / T), also for confident rows whose float32
    softmax is below 1e-12 or underflows to 0 (what the ONNX graph computes exactly)."""
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 4, size=(200, 8))
    logits[:50, 0] += 60  # p of the other classes ~1e-26 in float64, some 0 in float32
    probs = apply_temperature(logits, 1.0).astype(np.float32)
    got = calibrate(probs, temperature)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, apply_temperature(logits, temperature), atol=2e-6)
    assert calibrate(probs, None) is probs
