"""Evaluate a model on one split, plain and with TTA; write the run's test artefacts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bloodmnist.atomic import atomic_open
from bloodmnist.config import Config, EvalConfig
from bloodmnist.data.loader import Normalizer, to_tensor
from bloodmnist.data.npz import Dataset, default_names
from bloodmnist.evaluation.calibration import (
    apply_temperature,
    calibration_metrics,
    fit_temperature,
    logits_from_probs,
)
from bloodmnist.evaluation.metrics import compute_metrics
from bloodmnist.evaluation.predict import predict_probs, shard_range
from bloodmnist.evaluation.run_files import COMPARED_TTA, TTA_MODES
from bloodmnist.progress import make_bar
from bloodmnist.runtime import Runtime

SAMPLE_IMAGES = 32
DATASET_SAMPLES_PER_CLASS = 6


def other_ttas(mode: str, every: bool = False) -> list[str]:
    """The TTA modes that are reported beside `mode`: the base two, or with `every` all."""
    return [m for m in (TTA_MODES if every else COMPARED_TTA) if m != mode]


def _probs(
    model: nn.Module,
    images: torch.Tensor,
    rt: Runtime,
    norm: Normalizer,
    cfg: Config,
    desc: str,
    tta: EvalConfig | None = None,
    bar: bool = False,
) -> np.ndarray:
    """predict_probs with a live bar (`bar`) over this process's images (its torchrun shard)."""
    lo, hi = shard_range(len(images), rt.rank, rt.world_size)
    with make_bar(bar and rt.is_main, hi - lo, desc) as progress:
        batch = cfg.eval.batch_size
        return predict_probs(model, images, rt, norm, batch, tta=tta, on_batch=progress.update)


def evaluate_split(
    model: nn.Module,
    data: Dataset,
    split: str,
    cfg: Config,
    rt: Runtime,
    tta: bool,
    compare_tta: bool = True,
    progress: bool = False,
    every_tta: bool = False,
) -> dict[str, Any]:
    """Probabilities and metrics for `split`; with `tta` also the TTA variant of
    `cfg.eval.tta_mode`. With `compare_tta` the base modes beside it are computed too
    (`probs_tta_<mode>`, `other_ttas`; with `every_tta` all modes), so they can be compared.
    `progress`: a live bar per pass (the caller has checked that stderr is a terminal)."""
    sp = data.split(split)
    images = to_tensor(sp.images, rt.device)
    norm = Normalizer(cfg.data.mean, cfg.data.std, rt.device, rt.channels_last)
    names = list(cfg.model.names())  # the data's own names (data build) or BloodMNIST's
    probs = _probs(model, images, rt, norm, cfg, split, bar=progress)
    out: dict[str, Any] = {
        "class_names": names,
        "labels": sp.labels,
        "probs": probs,
        "metrics": compute_metrics(sp.labels, probs, names),
    }
    if tta:
        probs_tta = _probs(model, images, rt, norm, cfg, f"{split} TTA", cfg.eval, progress)
        out["tta_mode"] = cfg.eval.tta_mode
        out["probs_tta"] = probs_tta
        out["metrics_tta"] = compute_metrics(sp.labels, probs_tta, names)
    for other in other_ttas(cfg.eval.tta_mode, every_tta) if tta and compare_tta else []:
        desc = f"{split} TTA ({other})"
        other_cfg = replace(cfg.eval, tta_mode=other)
        probs_other = _probs(model, images, rt, norm, cfg, desc, other_cfg, progress)
        out[f"probs_tta_{other}"] = probs_other
        out[f"metrics_tta_{other}"] = compute_metrics(sp.labels, probs_other, names)
    return out


def dataset_samples(data: Dataset, per_class: int = DATASET_SAMPLES_PER_CLASS):
    """The first `per_class` training images of each class (for the dataset figure)."""
    idx = np.concatenate(
        [np.flatnonzero(data.train.labels == c)[:per_class] for c in range(data.num_classes)]
    )
    return data.train.images[idx], data.train.labels[idx]


def save_predictions(
    path: Path, result: dict[str, Any], data: Dataset, extra: dict[str, np.ndarray] | None = None
) -> None:
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
        "class_names": np.array(result.get("class_names") or default_names(data.num_classes)),
    }
    for mode in TTA_MODES:  # the TTA mode beside the run's own
        if f"probs_tta_{mode}" in result:
            arrays[f"test_probs_tta_{mode}"] = result[f"probs_tta_{mode}"]
    arrays.update(extra or {})  # e.g. an ensemble's validation probabilities
    with atomic_open(path) as fh:
        np.savez_compressed(fh, **arrays)


def summary_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """The flat test_* keys of summary.json plus the full metric dicts."""
    plain = result["metrics"]
    tta = result.get("metrics_tta")  # None when TTA was switched off: no fake TTA numbers
    extra = {  # the other TTA mode, where it was computed
        f"test_{k}_tta_{mode}": result[f"metrics_tta_{mode}"][k]
        for mode in TTA_MODES
        if f"metrics_tta_{mode}" in result
        for k in ("acc", "macro_f1", "auc")
    }
    return {
        "tta_mode": result.get("tta_mode"),
        "test_acc": plain["acc"],
        "test_acc_tta": tta["acc"] if tta else None,
        "test_macro_f1": plain["macro_f1"],
        "test_macro_f1_tta": tta["macro_f1"] if tta else None,
        "test_auc": plain["auc"],
        "test_auc_tta": tta["auc"] if tta else None,
        "test_n": plain["n"],
        **calibration_summary(result),
        **extra,
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


def temperature_from_probs(val: dict[str, Any], test: dict[str, Any]) -> dict[str, Any]:
    """temperature(_tta) fitted on `val`'s probabilities and the test calibration after it
    (`val`/`test`: dicts with labels, probs and optionally probs_tta)."""
    fitted = {
        key: fit_temperature(logits_from_probs(val[key]), val["labels"])
        for key in ("probs", "probs_tta")
        if key in test
    }
    return calibration_at(test, fitted.get("probs"), fitted.get("probs_tta"))


def calibration_at(test: dict[str, Any], t: float | None, t_tta: float | None) -> dict[str, Any]:
    """temperature(_tta) = t (t_tta) and the test calibration after it; None where there is
    no such temperature or `test` has no such probabilities (TTA off)."""
    out: dict[str, Any] = {}
    for key, suffix, temp in (("probs", "", t), ("probs_tta", "_tta", t_tta)):
        if key not in test or temp is None:
            out.update({f"temperature{suffix}": None})
            out.update({f"test_{n}{suffix}_ts": None for n in ("ece", "nll", "brier")})
            continue
        scaled = apply_temperature(logits_from_probs(test[key]), temp)
        out[f"temperature{suffix}"] = temp
        for name, value in calibration_metrics(scaled, test["labels"]).items():
            out[f"test_{name}{suffix}_ts"] = value
    return out
