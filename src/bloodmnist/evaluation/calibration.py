"""Calibration of predicted probabilities: ECE, Brier, NLL, reliability bins, temperature scaling.

Pure numpy/scipy functions on integer labels ``(N,)`` and probabilities ``(N, C)``.

Definitions (Guo et al. 2017, "On Calibration of Modern Neural Networks"):
- confidence = max class probability, prediction = its argmax;
- 15 equal-width confidence bins ``(0, 1/15], (1/15, 2/15], ...`` (right-closed);
- ECE = sum over bins of |bin| / N * |accuracy(bin) - mean confidence(bin)|;
- Brier = mean over images of sum over classes of (p_c - onehot_c)^2 (0 is perfect, max 2);
- NLL = mean of -log p(true class), probabilities clipped at 1e-12.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

# SciPy is imported where it is used: `predict` and `serve` apply a temperature through this
# module, and SciPy's optimiser with scikit-learn (metrics.py) would add ~1 s to their start.

#: Probabilities are clipped here before the log so one confident mistake cannot give ``inf``.
NLL_EPS = 1e-12
ECE_BINS = 15
#: Temperatures searched by `fit_temperature`; far beyond anything a sane network needs.
TEMPERATURE_BOUNDS = (0.05, 20.0)


def _inputs(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(y).reshape(-1).astype(np.int64)
    if p.ndim != 2 or p.shape[0] != t.size or t.size == 0:
        raise ValueError(f"probs must have shape ({t.size}, C) with N > 0, got {p.shape}")
    return p, t


def reliability_bins(probs: np.ndarray, y: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Per-bin count, accuracy and mean confidence (NaN for empty bins) plus the bin edges."""
    p, t = _inputs(probs, y)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == t).astype(np.float64)
    # ceil(conf * n) - 1 puts conf in the right-closed bin ((k-1)/n, k/n]; 0 joins the first.
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(idx, weights=correct, minlength=n_bins) / counts
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / counts
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1),
        "count": counts.astype(np.int64),
        "accuracy": acc,
        "confidence": mean_conf,
    }


def ece(probs: np.ndarray, y: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error with ``n_bins`` equal-width confidence bins."""
    bins = reliability_bins(probs, y, n_bins)
    filled = bins["count"] > 0
    gap = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    return float(np.sum(bins["count"][filled] * gap) / bins["count"].sum())


def brier(probs: np.ndarray, y: np.ndarray) -> float:
    """Multi-class Brier score: mean squared distance to the one-hot label, summed over classes."""
    p, t = _inputs(probs, y)
    onehot = np.zeros_like(p)
    onehot[np.arange(t.size), t] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class."""
    p, t = _inputs(probs, y)
    return float(np.mean(-np.log(np.clip(p[np.arange(t.size), t], NLL_EPS, 1.0))))


def calibration_metrics(probs: np.ndarray, y: np.ndarray, n_bins: int = ECE_BINS) -> dict:
    """``{"ece", "nll", "brier"}`` for one set of probabilities."""
    return {"ece": ece(probs, y, n_bins), "nll": nll(probs, y), "brier": brier(probs, y)}


def logits_from_probs(probs: np.ndarray) -> np.ndarray:
    """log p: softmax(log p) == p, so these are valid logits (up to a per-row constant)."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), NLL_EPS, 1.0))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T) in float64; T > 1 softens, T < 1 sharpens; argmax is unchanged."""
    from scipy.special import log_softmax

    z = np.asarray(logits, dtype=np.float64) / temperature
    return np.exp(log_softmax(z, axis=1))


def calibrate(probs: np.ndarray, temperature: float | None) -> np.ndarray:
    """Probabilities after a temperature: softmax(log p / T), float32 like the engines' output.

    For one view log p are the logits up to a constant, so this is softmax(logits / T); for TTA
    it scales the mean of the views' softmax, which is what `temperature_tta` was fitted on.
    `None` (no temperature fitted) returns `probs` unchanged.
    """
    if temperature is None:
        return probs
    # Clip where float32 underflows, not at NLL_EPS: a clip at 1e-12 would lift a p of 1e-20 to
    # 1e-12 ** (1 / T), visibly above softmax(logits / T) for T > 2 (the ONNX graph's exact value).
    logits = np.log(np.maximum(np.asarray(probs, dtype=np.float64), np.finfo(np.float32).tiny))
    return apply_temperature(logits, temperature).astype(np.float32)


def _nll_logits(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    from scipy.special import log_softmax

    logp = log_softmax(logits / temperature, axis=1)
    return float(-np.mean(logp[np.arange(y.size), y]))


#: Why the fit reached (the low bound, the high bound) of T; no entry when it did neither.
_BOUND_REASONS = {
    (True, True): "the validation predictions carry no information "
    "(the NLL does not change with T)",
    (True, False): "the validation predictions are (almost) all right, so they cannot tell how "
    "confident the model should be",
    (False, True): "the validation predictions are no better than chance",
}


def fit_temperature(
    logits: np.ndarray, y: np.ndarray, bounds: tuple[float, float] = TEMPERATURE_BOUNDS
) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) on held-out (validation) data.

    Searched over log T (bounded Brent), which is smooth and keeps T positive. Fit it on the
    validation split only; fitting on test would make the "after" numbers optimistic.
    """
    from scipy.optimize import minimize_scalar

    z, t = _inputs(logits, y)
    res = minimize_scalar(
        lambda log_t: _nll_logits(z, t, math.exp(log_t)),
        bounds=(math.log(bounds[0]), math.log(bounds[1])),
        method="bounded",
        options={"xatol": 1e-6},
    )
    t_fit = float(math.exp(res.x))
    # No minimum inside: the NLL keeps falling towards a bound (or is flat there, where
    # float64 cannot tell 1 + e^-40 from 1): T is then arbitrary, not fitted.
    low, high = (_nll_logits(z, t, b) <= float(res.fun) + 1e-12 for b in bounds)
    why = _BOUND_REASONS.get((low, high))
    if why:
        logging.getLogger(__name__).warning(
            "the temperature fit ran into its bound (T=%.3g): %s; the calibrated "
            "probabilities are not to be trusted (validate on more images)",
            t_fit,
            why,
        )
    return t_fit
