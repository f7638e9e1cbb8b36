"""DIR/report.html for a search: Optuna's matplotlib plots embedded like the run report."""

from __future__ import annotations

import base64
import html
import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from bloodmnist.atomic import write_text_atomic
from bloodmnist.reporting.figures import plt
from bloodmnist.reporting.html import CSS, table
from bloodmnist.tuning.results import best_trial, trial_rows

PLOTS: tuple[tuple[str, str], ...] = (
    ("plot_optimization_history", "Optimisation history: each trial's best validation accuracy"),
    ("plot_param_importances", "Parameter importances (fANOVA) for validation accuracy"),
    ("plot_parallel_coordinate", "Parallel coordinates: parameter values of every trial"),
    (
        "plot_intermediate_values",
        "Validation accuracy of every trial as reported for pruning (per epoch; with "
        "pruner.by: progress, per twentieth of the trial's own schedule)",
    ),
)


def _plot_png(name: str, study: optuna.Study) -> str | None:
    """One Optuna matplotlib plot as base64 PNG; None when the study cannot draw it yet
    (e.g. importances need two finished trials and a parameter that varied)."""
    plot: Callable[..., Any] = getattr(optuna.visualization.matplotlib, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the matplotlib backend is marked experimental
            ax = plot(study)
    except Exception:  # any plot the study cannot draw yet must not fail the search
        return None
    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    fig.set_size_inches(9, 5)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figures(study: optuna.Study) -> str:
    parts = []
    for name, caption in PLOTS:
        data = _plot_png(name, study)
        if data is None:
            parts.append(f"<p>{html.escape(caption)}: not enough finished trials yet.</p>")
            continue
        parts.append(
            f'<figure><img alt="{name}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    return "\n".join(parts)


def _headline(study: optuna.Study) -> str:
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    counts = {s: states.count(s) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    best = best_trial(study)
    rows = [[k.lower(), v] for k, v in counts.items()]
    if best is not None:
        rows.append(["best trial", best.number])
        rows.append(["best validation accuracy", best.value])
        rows += [[f"best {k}", v] for k, v in best.params.items()]
    return table(["", "value"], rows, cls="headline")


def _objective(study: optuna.Study) -> str:
    seeds = (study.user_attrs.get("space") or {}).get("seeds")
    if seeds:
        listed = ", ".join(map(str, seeds))
        return f"mean over seeds {listed} of each trial's best validation accuracy"
    return "best validation accuracy of each trial"


def write_report(study: optuna.Study, tune_dir: Path, name: str) -> Path:
    """Self-contained report.html (inline CSS and PNGs); the test split appears nowhere."""
    header, rows = trial_rows(study)
    title = f"bloodmnist tune: {html.escape(name)}"
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{CSS}</style></head><body><main><h1>{title}</h1>"
        f"<p>Objective: {html.escape(_objective(study))} (the test split is never "
        "evaluated during a search). Train the winner with "
        "<code>bloodmnist train --config best.yaml</code>.</p>"
        f"<h2>Summary</h2>{_headline(study)}<h2>Plots</h2>{_figures(study)}"
        f"<h2>Trials</h2>{table(header, rows)}</main></body></html>\n"
    )
    path = tune_dir / "report.html"
    write_text_atomic(path, page)
    return path
