"""Evaluate a model on one split, plain and with TTA; write the run's test artefacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from bloodmnist import CLASS_NAMES
from bloodmnist.atomic import atomic_open
from bloodmnist.config import Config
from bloodmnist.data.loader import Normalizer, to_tensor
from bloodmnist.data.npz import Dataset
from bloodmnist.evaluation.calibration import (
    apply_temperature,
    calibration_metrics,
    fit_temperature,
    logits_from_probs,
)
from bloodmnist.evaluation.metrics import compute_metrics
from bloodmnist.evaluation.predict import predict_probs
from bloodmnist.runtime import Runtime

SAMPLE_IMAGES = 32
DATASET_SAMPLES_PER_CLASS = 6


def evaluate_split(
    model: nn.Module, data: Dataset, split: str, cfg: Config, rt: Runtime, tta: bool
) -> dict[str, Any]:
    """Probabilities and metrics for `split`; with `tta` also the 7-view TTA variant."""
    sp = data.split(split)
    images = to_tensor(sp.images, rt.device)
    norm = Normalizer(cfg.data.mean, cfg.data.std, rt.device, rt.channels_last)
    names = CLASS_NAMES[: cfg.model.num_classes]
    probs = predict_probs(model, images, rt, norm, cfg.eval.batch_size)
    out: dict[str, Any] = {
        "labels": sp.labels,
        "probs": probs,
        "metrics": compute_metrics(sp.labels, probs, names),
    }
    if tta:
        probs_tta = predict_probs(model, images, rt, norm, cfg.eval.batch_size, tta=cfg.eval)
        out["probs_tta"] = probs_tta
        out["metrics_tta"] = compute_metrics(sp.labels, probs_tta, names)
    return out


def dataset_samples(data: Dataset, per_class: int = DATASET_SAMPLES_PER_CLASS):
    """The first `per_class` training images of each class (for the dataset figure)."""
    idx = np.concatenate(
        [np.flatnonzero(data.train.labels == c)[:per_class] for c in range(data.num_classes)]
    )
    return data.train.images[idx], data.train.labels[idx]


def save_predictions(path: Path, result: dict[str, Any], data: Dataset) -> None:
    """predictions.npz: everything the reports need, so they rebuild without the model.

    Written to a temp file and renamed: a full disk never leaves a truncated predictions.npz.
    """
    ds_images, ds_labels = dataset_samples(data)
    probs_tta = result.get("probs_tta", result["probs"])
    arrays = {
        "test_labels": result["labels"].astype(np.int64),
        "test_probs": result["probs"].astype(np.float32),
        "test_probs_tta": probs_tta.astype(np.float32),
        "sample_images": data.test.images[:SAMPLE_IMAGES],
        "sample_labels": data.test.labels[:SAMPLE_IMAGES],
        "dataset_images": ds_images,
        "dataset_labels": ds_labels,
        "class_names": np.array(CLASS_NAMES[: data.num_classes]),
    }
    with atomic_open(path) as fh:
        np.savez_compressed(fh, **arrays)


def summary_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """The flat test_* keys of summary.json plus the full metric dicts."""
    plain = result["metrics"]
    tta = result.get("metrics_tta")  # None when TTA was switched off: no fake TTA numbers
    return {
        "test_acc": plain["acc"],
        "test_acc_tta": tta["acc"] if tta else None,
        "test_macro_f1": plain["macro_f1"],
        "test_macro_f1_tta": tta["macro_f1"] if tta else None,
        "test_auc": plain["auc"],
        "test_auc_tta": tta["auc"] if tta else None,
        "test_n": plain["n"],
        **calibration_summary(result),
        "test": plain,
        "test_tta": tta,
    }


def calibration_summary(result: dict[str, Any]) -> dict[str, float | None]:
    """test_ece, test_nll, test_brier and their _tta twins (None when TTA was off)."""
    out: dict[str, float | None] = {}
    for key, suffix in (("probs", ""), ("probs_tta", "_tta")):
        probs = result.get(key)
        values = calibration_metrics(probs, result["labels"]) if probs is not None else {}
        for name in ("ece", "nll", "brier"):
            out[f"test_{name}{suffix}"] = values.get(name)
    return out


def temperature_scaling(
    model: nn.Module, data: Dataset, cfg: Config, rt: Runtime, test: dict[str, Any]
) -> dict[str, Any]:
    """Fit T on the validation split only, apply it to the test probabilities, report both.

    log(p) of the softmax output are valid logits (softmax is shift-invariant), so no logits need
    storing. TTA gets its own T, fitted on validation TTA probabilities. Accuracy is unchanged
    (argmax is invariant to T), so only the calibration numbers move.
    """
    val = evaluate_split(model, data, "val", cfg, rt, tta="probs_tta" in test)
    out: dict[str, Any] = {}
    for key, suffix in (("probs", ""), ("probs_tta", "_tta")):
        if key not in test:
            out.update({f"temperature{suffix}": None})
            out.update({f"test_{n}{suffix}_ts": None for n in ("ece", "nll", "brier")})
            continue
        t = fit_temperature(logits_from_probs(val[key]), val["labels"])
        scaled = apply_temperature(logits_from_probs(test[key]), t)
        out[f"temperature{suffix}"] = t
        for name, value in calibration_metrics(scaled, test["labels"]).items():
            out[f"test_{name}{suffix}_ts"] = value
    return out
