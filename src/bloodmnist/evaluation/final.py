"""Evaluate a model on one split, plain and with TTA; write the run's test artefacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from bloodmnist import CLASS_NAMES
from bloodmnist.config import Config
from bloodmnist.data.loader import Normalizer, to_tensor
from bloodmnist.data.npz import Dataset
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
    """predictions.npz: everything the reports need, so they rebuild without the model."""
    ds_images, ds_labels = dataset_samples(data)
    probs_tta = result.get("probs_tta", result["probs"])
    np.savez_compressed(
        path,
        test_labels=result["labels"].astype(np.int64),
        test_probs=result["probs"].astype(np.float32),
        test_probs_tta=probs_tta.astype(np.float32),
        sample_images=data.test.images[:SAMPLE_IMAGES],
        sample_labels=data.test.labels[:SAMPLE_IMAGES],
        dataset_images=ds_images,
        dataset_labels=ds_labels,
        class_names=np.array(CLASS_NAMES[: data.num_classes]),
    )


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
        "test": plain,
        "test_tta": tta,
    }
