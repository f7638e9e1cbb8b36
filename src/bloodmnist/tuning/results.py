"""A search's results in its folder: trials.csv, best.yaml and report.html."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import optuna

from bloodmnist.atomic import write_text_atomic
from bloodmnist.config import save_yaml
from bloodmnist.tuning.objective import BaseSpec, apply_params

TRIALS_CSV = "trials.csv"
BEST_YAML = "best.yaml"
COMPLETE = optuna.trial.TrialState.COMPLETE


def trial_rows(study: optuna.Study) -> tuple[list[str], list[list[Any]]]:
    """(header, rows): one row per trial, parameters as columns, in trial order."""
    trials = study.get_trials(deepcopy=False)
    keys = sorted({k for t in trials for k in t.params})
    header = ["number", "state", "best_val_acc", "epochs_run", "seconds", *keys]
    header += ["val_acc_per_seed", "host", "run_dir", "note"]
    rows = []
    for t in trials:
        seconds = (
            round((t.datetime_complete - t.datetime_start).total_seconds(), 1)
            if t.datetime_complete and t.datetime_start
            else None
        )
        value = t.value
        a = t.user_attrs
        if t.state == optuna.trial.TrialState.PRUNED:
            # its best epoch before it was pruned (older studies: the best reported one); not
            # t.value, which Optuna sets to the last reported value of a pruned trial
            reported = max(t.intermediate_values.values(), default=value)
            value = a.get("best_val_acc", reported)
        rows.append(
            [t.number, t.state.name, value, a.get("epochs_run"), seconds]
            + [t.params.get(k) for k in keys]
            + [_per_seed(a.get("seed_val_acc")), a.get("host"), a.get("run_dir"), a.get("note")]
        )
    return header, rows


def _per_seed(scores: dict[str, float] | None) -> str | None:
    """'42:0.9766 43:0.9743' for a trial of several seeds (its score is their mean)."""
    return " ".join(f"{k}:{v:.4f}" for k, v in scores.items()) if scores else None


def write_trials_csv(study: optuna.Study, path: Path) -> Path:
    header, rows = trial_rows(study)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(["" if v is None else v for v in row] for row in rows)
    write_text_atomic(path, buf.getvalue())
    return path


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    done = [t for t in study.get_trials(deepcopy=False, states=(COMPLETE,)) if _finite(t.value)]
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def write_best_yaml(
    study: optuna.Study, base: BaseSpec, study_name: str, path: Path
) -> Path | None:
    """The winning values on the fixed options: a config `train --config` takes. Rebuilt from
    the study (the winner's folder may be on another machine); the final test and reports on."""
    best = best_trial(study)
    if best is None:
        return None
    cfg = apply_params(base, best.params)
    cfg.eval.final_test = True
    cfg.runtime.reports = True
    cfg.runtime.name = f"{study_name}-best"
    save_yaml(cfg, path)
    return path


def write_outputs(study: optuna.Study, tune_dir: Path, base: BaseSpec, name: str) -> dict:
    """trials.csv, best.yaml (when a trial completed) and report.html; name -> path."""
    from bloodmnist.tuning.report import write_report

    out: dict[str, Path] = {"trials": write_trials_csv(study, tune_dir / TRIALS_CSV)}
    best = write_best_yaml(study, base, name, tune_dir / BEST_YAML)
    if best is not None:
        out["best"] = best
    out["report"] = write_report(study, tune_dir, name)
    return out
