"""The end of a training run: what it cost (PFLOP), the one evaluation of the test split on
best.pt, summary.json, predictions and the MedMNIST-evaluator CSVs, and the reports."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from bloodmnist.config import Config
from bloodmnist.data.npz import Dataset
from bloodmnist.evaluation.final import (
    calibration_at,
    evaluate_split,
    save_predictions,
    summary_metrics,
    temperature_from_probs,
)
from bloodmnist.evaluation.medmnist_csv import write_run_csvs
from bloodmnist.model.flops import flops_per_image, train_pflop
from bloodmnist.runtime import Runtime, from_main
from bloodmnist.training.checkpoint import add_to_checkpoint, load_checkpoint, load_model_weights
from bloodmnist.training.optim import step_flops
from bloodmnist.training.rundir import write_json
from bloodmnist.training.trainer import TrainState

log = logging.getLogger("bloodmnist")


def skip_test(run_dir: Path, rt: Runtime, fields: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """summary.json of a run with eval.final_test=false: training facts, no test metrics (a
    fixed temperature is stored all the same: it needs no evaluation)."""
    summary = {"status": "completed", "test_evaluated": False, **fields}
    summary.update(test_acc=None, test_acc_tta=None)
    if (fixed := fixed_temperatures(cfg)) is not None:
        temps = {"temperature": fixed[0], "temperature_tta": fixed[1]}
        summary.update(temps, temperature_source="eval.temperature")
    if rt.is_main:
        if fixed is not None:
            add_to_checkpoint(run_dir / "checkpoints" / "best.pt", {"temperature": _temps(summary)})
        write_json(run_dir / "summary.json", summary)
        log.info("final test skipped (eval.final_test=false): the test split was not evaluated")
    return summary


def test_once(
    model: nn.Module,
    data: Dataset,
    cfg: Config,
    rt: Runtime,
    run_dir: Path,
    fields: dict[str, Any],
    progress: bool = False,
    reports: Callable[[Path], Any] | None = None,
) -> dict[str, Any]:
    """Evaluate best.pt on the test split (the one time it is seen), write the results, build
    the reports with `reports(run_dir)` where given and wanted, and return summary.json's
    content; `fields` are the training facts it carries. `progress`: live bars for the test
    passes (stderr is a terminal)."""
    best_path = run_dir / "checkpoints" / "best.pt"
    load_model_weights(model, _best_weights(best_path, rt), best_path)
    t0 = time.perf_counter()
    result = evaluate_split(
        model, data, "test", cfg, rt, cfg.eval.tta, cfg.eval.compare_tta, progress=progress
    )
    metrics = summary_metrics(result)
    if cfg.eval.tta or cfg.eval.temperature_scaling:  # one validation pass serves both
        # every rank: the validation pass gathers across ranks
        val = evaluate_split(model, data, "val", cfg, rt, cfg.eval.tta, cfg.eval.compare_tta)
        metrics.update(val_tta_fields(val))
        if cfg.eval.temperature_scaling:  # T from validation only; test calibration after it
            metrics.update(temperature_from_probs(val, result), temperature_source="validation")
    if (fixed := fixed_temperatures(cfg)) is not None:  # a train+val run has no held-out images
        metrics.update(calibration_at(result, *fixed), temperature_source="eval.temperature")
    summary = {
        "status": "completed",
        **{k: v for k, v in metrics.items() if k not in ("test", "test_tta")},
        **fields,
        "test_eval_seconds": round(time.perf_counter() - t0, 2),
        "test": metrics["test"],
        "test_tta": metrics["test_tta"],
    }
    if rt.is_main:
        if "temperature_source" in metrics:  # predict, serve and export apply it from now on
            add_to_checkpoint(best_path, {"temperature": _temps(metrics)})
        save_predictions(run_dir / "predictions.npz", result, data)
        write_run_csvs(run_dir, result, cfg.data.size)  # for the official MedMNIST evaluator
        write_json(run_dir / "summary.json", summary)
        log.info("test: %s", _headline(summary))
        if cfg.runtime.reports and reports is not None:
            reports(run_dir)
            log.info("reports: %s, %s", run_dir / "report.html", run_dir / "report.xlsx")
        else:
            why = "runtime.reports=false" if not cfg.runtime.reports else "not asked for"
            log.info("reports skipped (%s); build them with: bloodmnist report %s", why, run_dir)
    return summary


def fixed_temperatures(cfg: Config) -> tuple[float, float | None] | None:
    """(T, T_tta) from eval.temperature(_tta), the one-view T for the TTA mean where no T_tta
    is given (None without TTA); None where no temperature is fixed."""
    t, t_tta = cfg.eval.temperature, cfg.eval.temperature_tta
    if t is None:
        return None
    return t, (t if t_tta is None else t_tta) if cfg.eval.tta else None


def _temps(fields: dict[str, Any]) -> dict[str, float | None]:
    """best.pt's temperature entry, which predict, serve and export read."""
    return {"plain": fields["temperature"], "tta": fields["temperature_tta"]}


def val_tta_fields(result: dict[str, Any]) -> dict[str, float]:
    """Validation accuracy of best.pt with each TTA the validation `result` holds, so that a
    recipe's TTA mode can be chosen on validation (the test numbers beside them must not)."""
    if "metrics_tta" not in result:
        return {}
    fields = {"val_acc_tta": result["metrics_tta"]["acc"]}
    for key, value in result.items():
        if key.startswith("metrics_tta_"):  # the other TTA modes beside the run's own
            fields[f"val_acc_tta_{key.removeprefix('metrics_tta_')}"] = value["acc"]
    return fields


def _best_weights(best_path: Path, rt: Runtime) -> dict[str, Any]:
    """best.pt for every rank. Under torchrun rank 0 reads it and broadcasts the weights: it has
    just written the file (no stale read by a faster rank), and other nodes may not see it."""
    if not rt.distributed:
        return load_checkpoint(best_path, map_location=rt.device)
    return {"model": from_main(rt, lambda: load_checkpoint(best_path)["model"])}


def _headline(summary: dict[str, Any]) -> str:
    parts = []
    for key, label in (("test_acc", "acc"), ("test_macro_f1", "macro-F1"), ("test_auc", "AUC")):
        plain, tta = summary.get(key), summary.get(f"{key}_tta")
        text = f"{label} {plain:.4f}" if plain is not None else f"{label} n/a"
        parts.append(text + (f" (TTA {tta:.4f})" if tta is not None else ""))
    return "  ".join(parts)


def compute_fields(
    model: nn.Module, teachers: list[nn.Module], cfg: Config, images_seen: int, steps: int
) -> dict[str, Any]:
    """What the run cost in arithmetic: the model's FLOPs per image and the training PFLOP,
    which includes a distillation teacher's forward pass on every training image, SAM's second
    pass and the optimiser's matrix work (Muon's orthogonalisation, once per optimiser step)."""
    flops = flops_per_image(model, cfg.data.size)
    passes = 2 if cfg.optim.sam_rho > 0 else 1  # SAM: a second forward and backward per step
    per_image = passes * flops["train"] + sum(
        flops_per_image(t, cfg.data.size)["forward"] for t in teachers
    )
    optimiser = step_flops(model, cfg) * steps / 1e15
    fields = {
        "arch": cfg.model.arch,
        "gflop_forward_per_image": round(flops["forward"] / 1e9, 5),
        "train_images_seen": images_seen,
        "train_pflop": float(f"{train_pflop(per_image, images_seen) + optimiser:.4g}"),
    }
    if optimiser:
        fields["optimizer_pflop"] = float(f"{optimiser:.4g}")
    return fields


def state_fields(state: TrainState) -> dict[str, Any]:
    return {
        "best_val_acc": state.best_val_acc,
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "stopped_early": state.stopped_early,
        "train_seconds": round(state.train_seconds, 2),
    }
