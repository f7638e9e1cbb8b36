"""`bloodmnist ensemble`: average members' probabilities on val and test, write a run-like folder.

Test probabilities come from each member's predictions.npz (the test split is not evaluated
again); validation probabilities are computed once from each member's best.pt (runs do not
save them) and stored in the ensemble's predictions.npz (`val_probs`, `val_probs_tta`), so
choices between ensembles can be made on validation. The folder has the files `bloodmnist
report`, `compare` and `train.teacher` read: summary.json, predictions.npz, history.csv (no
epochs), ensemble.json (the members), manifest.json, the evaluator CSVs, figures and reports.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import numpy as np

from bloodmnist.data.npz import Dataset
from bloodmnist.data.source import DataInfo, load_data
from bloodmnist.ensembles.members import Member
from bloodmnist.errors import BloodMNISTError
from bloodmnist.evaluation.final import (
    TTA_MODES,
    calibration_at,
    evaluate_split,
    save_predictions,
    summary_metrics,
    temperature_from_probs,
)
from bloodmnist.evaluation.medmnist_csv import write_run_csvs
from bloodmnist.evaluation.metrics import compute_metrics
from bloodmnist.evaluation.run_files import joint_train_on
from bloodmnist.runtime import Runtime
from bloodmnist.training.rundir import build_manifest, write_history, write_json
from bloodmnist.training.teacher import ENSEMBLE_FILE, load_eval_model

log = logging.getLogger("bloodmnist")


def mean_probs(arrays: list[np.ndarray]) -> np.ndarray:
    """The members' probabilities averaged in float64, stored as float32 like a run's."""
    return np.mean(np.stack([a.astype(np.float64) for a in arrays]), axis=0).astype(np.float32)


def check_out(out: str | None) -> Path:
    """The output folder, which must be new or empty: an ensemble never writes over a user's
    files. Checked before any work; created by `write_ensemble` once the members fit."""
    path = Path(out) if out else Path("runs") / f"{dt.datetime.now():%Y%m%d-%H%M%S}-ensemble"
    path = path.expanduser()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise BloodMNISTError(f"--out {path} exists and is not an empty folder; pick a new --out")
    return path


def load_member_data(members: list[Member], data_path: str | None) -> tuple[Dataset, DataInfo]:
    """The members' data (their --subset too), checked against their recorded MD5."""
    cfg = members[0].cfg
    path = data_path or cfg.data.path
    data, info = load_data(
        path, cfg.data.size, cfg.model.num_classes, cfg.data.subset, False, model=cfg.model
    )
    md5 = members[0].summary.get("data_md5")
    if info.md5 != md5:
        raise BloodMNISTError(
            f"{info.path} has MD5 {info.md5}, the members were trained on {md5}; pass the "
            "members' file with --data"
        )
    if not np.array_equal(data.test.labels.reshape(-1), members[0].preds["test_labels"]):
        raise BloodMNISTError(f"{info.path}: test labels differ from the members' predictions")
    return data, info


def tta_mode(members: list[Member]) -> str | None:
    """The members' TTA mode, "mixed: a+b" if they differ, None unless every member ran TTA."""
    if not all(m.has_tta for m in members):
        return None
    modes = sorted({m.tta_mode for m in members})
    return modes[0] if len(modes) == 1 else "mixed: " + "+".join(modes)


def val_probs(members: list[Member], data: Dataset, rt: Runtime, tta: bool) -> dict[str, Any]:
    """Mean validation probabilities (plain, and each member's own TTA when `tta`)."""
    plain, with_tta = [], []
    for m in members:
        model, _, _ = load_eval_model(m.checkpoint, rt.device, rt.channels_last)
        res = evaluate_split(model, data, "val", m.cfg, rt, tta=tta, compare_tta=False)
        plain.append(res["probs"])
        with_tta.append(res.get("probs_tta"))
        log.info("member %s: val acc %.4f", m.run_dir, res["metrics"]["acc"])
    out = {"labels": data.val.labels, "probs": mean_probs(plain)}
    if tta:
        out["probs_tta"] = mean_probs(with_tta)
    return out


def test_result(members: list[Member], names: list[str]) -> dict[str, Any]:
    """The ensemble's test result from the members' saved probabilities (as evaluate_split)."""
    labels = members[0].preds["test_labels"]
    probs = mean_probs([m.preds["test_probs"] for m in members])
    out: dict[str, Any] = {
        "class_names": names,
        "labels": labels,
        "probs": probs,
        "metrics": compute_metrics(labels, probs, names),
    }
    mode = tta_mode(members)
    if mode is None:
        return out
    probs_tta = mean_probs([m.preds["test_probs_tta"] for m in members])
    out.update(tta_mode=mode, probs_tta=probs_tta)
    out["metrics_tta"] = compute_metrics(labels, probs_tta, names)
    for other in TTA_MODES:  # every mode the members all have, beside the ensemble's own
        probs = [m.tta_probs(other) for m in members]
        if other != mode and all(p is not None for p in probs):  # report both, as runs do
            out[f"probs_tta_{other}"] = mean_probs(probs)
            out[f"metrics_tta_{other}"] = compute_metrics(labels, out[f"probs_tta_{other}"], names)
    return out


def _val_fields(val: dict[str, Any], names: list[str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key, suffix in (("probs", ""), ("probs_tta", "_tta")):
        m = compute_metrics(val["labels"], val[key], names) if key in val else None
        for name in ("acc", "macro_f1", "auc"):
            fields[f"val_{name}{suffix}"] = m[name] if m else None
    return fields


def _member_fields(members: list[Member]) -> dict[str, Any]:
    from_scratch = all(m.summary.get("trained_from_scratch", True) for m in members)
    pflops = [m.summary.get("train_pflop") for m in members]
    return {
        "members": [str(m.run_dir) for m in members],
        "member_test_acc": [m.summary.get("test_acc") for m in members],
        "member_test_acc_tta": [m.summary.get("test_acc_tta") for m in members],
        "member_seeds": [m.summary.get("seed") for m in members],
        "member_archs": [m.cfg.model.arch for m in members],
        # one member trained on the validation images makes the ensemble's val numbers in-sample
        "train_on": joint_train_on([m.summary for m in members]),
        "train_pflop": round(sum(pflops), 6) if None not in pflops else None,
        "train_seconds": round(sum(m.summary.get("train_seconds") or 0.0 for m in members), 2),
        "pretrained": "none" if from_scratch else "imagenet",
        "trained_from_scratch": from_scratch,
        "data_md5": members[0].summary.get("data_md5"),
        "data_official": members[0].summary.get("data_official"),
    }


def write_ensemble(
    members: list[Member], out: Path, data: Dataset, info: DataInfo, rt: Runtime
) -> dict[str, Any]:
    """Compute val, combine test, write every file; returns summary.json's content."""
    names = members[0].class_names
    test = test_result(members, names)
    val = val_probs(members, data, rt, tta="probs_tta" in test)
    out.mkdir(parents=True, exist_ok=True)
    metrics = summary_metrics(test)
    # members that trained on validation: a temperature fitted there would miscalibrate
    held_out = joint_train_on([m.summary for m in members]) == "train"
    temps = temperature_from_probs(val, test) if held_out else calibration_at(test, None, None)
    summary = {
        "status": "completed",
        "kind": "ensemble",
        **{k: v for k, v in metrics.items() if k not in ("test", "test_tta")},
        **temps,
        **_val_fields(val, names),
        **_member_fields(members),
        "seed": None,
        "device": str(rt.device),
        "precision": rt.precision,
        "test": metrics["test"],
        "test_tta": metrics["test_tta"],
    }
    write_json(out / ENSEMBLE_FILE, {"members": summary["members"], "data_md5": info.md5})
    extra = {"val_labels": val["labels"].astype(np.int64), "val_probs": val["probs"]}
    if "probs_tta" in val:
        extra["val_probs_tta"] = val["probs_tta"]
    save_predictions(out / "predictions.npz", test, data, extra)
    write_history(out / "history.csv", [])  # no epochs: the members' histories are theirs
    write_run_csvs(out, test, data.image_size)
    write_json(out / "manifest.json", build_manifest({"data": info.as_dict(), "kind": "ensemble"}))
    write_json(out / "summary.json", summary)
    return summary
