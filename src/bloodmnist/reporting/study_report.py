"""study.json, study.xlsx and a self-contained study.html for a multi-seed study."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from openpyxl import Workbook

from bloodmnist.atomic import write_text_atomic
from bloodmnist.evaluation.stats import format_mean_std
from bloodmnist.reporting.excel import save_workbook, write_table
from bloodmnist.reporting.figures import history_series, plt, save_figure
from bloodmnist.reporting.html import CSS, table
from bloodmnist.training.rundir import write_json

HEADLINE = (("acc", "Accuracy"), ("macro_f1", "Macro-F1"), ("auc", "AUC (MedMNIST)"))
CALIBRATION = (("ece", "ECE (15 bins)"), ("nll", "NLL"), ("brier", "Brier"))
FIGURE = "seed_curves.png"


def plot_seed_curves(histories: dict[int, list[dict[str, Any]]], path: Path) -> Path:
    """Validation accuracy, validation loss and training loss per epoch, one line per seed."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), layout="constrained")
    panels = (("val_acc", "validation accuracy"), ("val_loss", "validation loss"))
    for ax, (key, title) in zip(axes, (*panels, ("train_loss", "training loss")), strict=True):
        for seed, history in histories.items():
            x, y = history_series(history, key)
            if x:
                ax.plot(x, y, marker="o", markersize=3, label=f"seed {seed}")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"All seeds' curves ({len(histories)} seeds)")
    return save_figure(fig, path)


def _ci_text(ci: dict[str, Any] | None) -> str:
    if not ci or ci.get("low") is None:
        return "—"
    return f"[{ci['low']:.4f}, {ci['high']:.4f}]"


def _ms(record: dict[str, Any], key: str) -> str:
    return format_mean_std(record["mean_std"].get(key, {}))


def headline_rows(record: dict[str, Any]) -> list[list[str]]:
    """Metric, then mean ± std and the 95% CI of the seed mean, per variant."""
    rows = []
    for key, label in HEADLINE:
        row = [label]
        for v, suffix in (("plain", ""), ("tta", "_tta")):
            ci = record["ci95_seed_mean"].get(v, {}).get(key)
            row += [_ms(record, f"test_{key}{suffix}"), _ci_text(ci)]
        rows.append(row)
    return rows


def calibration_rows(record: dict[str, Any]) -> list[list[str]]:
    rows = [
        [label] + [_ms(record, f"test_{key}{s}") for s in ("", "_tta", "_ts", "_tta_ts")]
        for key, label in CALIBRATION
    ]
    temps = [_ms(record, "temperature"), _ms(record, "temperature_tta")]
    words = {"validation": "fitted on val", "eval.temperature": "fixed: eval.temperature"}
    source = [words.get(s, s) for s in record.get("temperature_source", ["validation"])]
    return [*rows, [f"temperature T ({'; '.join(source) or 'none'})", "—", "—", *temps]]


def per_seed_rows(record: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for r in record["per_seed"]:
        ci = r["ci95"]
        rows.append(
            [r["seed"], r["run_dir"]]
            + [r.get(f"test_{k}{s}") for k, _ in HEADLINE for s in ("", "_tta")]
            + [_ci_text(ci.get("plain", {}).get("acc")), _ci_text(ci.get("tta", {}).get("acc"))]
            + [r.get("test_ece"), r.get("test_ece_tta"), r.get("best_epoch")]
        )
    return rows


PER_SEED_HEADER = (
    ["seed", "run folder"]
    + [f"{label}{s}" for _, label in HEADLINE for s in ("", " (TTA)")]
    + ["acc 95% CI", "acc 95% CI (TTA)", "ECE", "ECE (TTA)", "best epoch"]
)
HEADLINE_HEADER = ["metric", "mean ± std", "95% CI of mean", "TTA mean ± std", "TTA 95% CI"]
CALIBRATION_HEADER = ["metric", "plain", "TTA", "plain after T", "TTA after T"]


def per_class_rows(record: dict[str, Any]) -> list[list[Any]]:
    tables = record["per_class"]
    rows = []
    for i, row in enumerate(tables["plain"]):
        out = [row["class"], row["support"]]
        for v in ("plain", "tta"):
            if v in tables:
                out += [format_mean_std(tables[v][i][m]) for m in ("recall", "f1")]
            else:
                out += ["—", "—"]
        rows.append(out)
    return rows


PER_CLASS_HEADER = ["class", "support", "recall", "F1", "recall (TTA)", "F1 (TTA)"]


def held_out_note(record: dict[str, Any]) -> str:
    """A warning paragraph where seeds trained on the validation images, else nothing."""
    if record.get("train_on") != "train+val":
        return ""
    return (
        '<p class="note">Seeds trained on train + val (data.train_on): their validation '
        "numbers and curves are on images they trained on, not held out.</p>"
    )


def _html_page(record: dict[str, Any], figure: Path, title: str) -> str:
    image = base64.b64encode(figure.read_bytes()).decode("ascii")
    failed = "".join(
        f'<p class="note">seed {html.escape(str(f["seed"]))} did not finish: '
        f"{html.escape(f['reason'])} (see {html.escape(f['log'])})</p>"
        for f in record.get("failed", [])
    )
    boot = record["bootstrap"]
    plan = json.dumps(record.get("plan", {}), indent=2)
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        failed,
        f"<p>{record['n_seeds']} seeds ({html.escape(', '.join(map(str, record['seeds'])))}), "
        f"test n={record['test_n']}, data MD5 {html.escape(str(record['data_md5']))}. "
        "Mean ± sample std (ddof=1) over seeds; 95% CIs are percentile bootstraps over test "
        f"images ({boot['n_boot']} resamples, seed {boot['seed']}).</p>",
        held_out_note(record),
        "<h2>Test metrics over seeds</h2>",
        table(HEADLINE_HEADER, headline_rows(record), cls="headline"),
        "<h2>Calibration over seeds</h2>",
        table(CALIBRATION_HEADER, calibration_rows(record)),
        "<h2>Curves</h2>",
        f'<figure><img alt="seed curves" src="data:image/png;base64,{image}">'
        "<figcaption>Validation accuracy, validation loss and training loss per epoch for "
        "every seed.</figcaption></figure>",
        "<h2>Per seed</h2>",
        table(PER_SEED_HEADER, per_seed_rows(record), left_cols=2),
        "<h2>Per class (mean ± std over seeds)</h2>",
        table(PER_CLASS_HEADER, per_class_rows(record)),
        f"<h2>Plan</h2><pre>{html.escape(plan)}</pre>",
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n"
        f"<body><main>\n{chr(10).join(s for s in sections if s)}\n</main></body></html>\n"
    )


def _summary_rows(record: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for key, stat in record["mean_std"].items():
        rows.append([key, stat["mean"], stat["std"], stat["n"]])
    for v, cis in record["ci95_seed_mean"].items():
        for key, ci in cis.items():
            rows.append(
                [f"ci95_seed_mean_{v}_{key}", ci["point"], None, None, ci["low"], ci["high"]]
            )
    return rows


def write_xlsx(record: dict[str, Any], path: Path) -> Path:
    wb = Workbook()
    ws = wb.active
    ws.title = "summary"
    write_table(ws, ["key", "mean", "std", "n", "ci_low", "ci_high"], _summary_rows(record))
    write_table(wb.create_sheet("per_seed"), PER_SEED_HEADER, per_seed_rows(record))
    write_table(wb.create_sheet("per_class"), PER_CLASS_HEADER, per_class_rows(record))
    plan = record.get("plan", {})
    write_table(wb.create_sheet("plan"), ["key", "value"], plan.items())
    save_workbook(wb, path)
    return path


def write_study_reports(
    study_dir: Path, record: dict[str, Any], histories: dict[int, list[dict[str, Any]]]
) -> dict[str, Path]:
    """Write study.json, figures/seed_curves.png, study.xlsx and study.html into study_dir."""
    study_dir = Path(study_dir)
    write_json(study_dir / "study.json", record)
    (study_dir / "figures").mkdir(exist_ok=True)
    figure = plot_seed_curves(histories, study_dir / "figures" / FIGURE)
    page = _html_page(record, figure, f"BloodMNIST study: {study_dir.name}")
    html_path = study_dir / "study.html"
    write_text_atomic(html_path, page)
    return {
        "json": study_dir / "study.json",
        "figure": figure,
        "excel": write_xlsx(record, study_dir / "study.xlsx"),
        "html": html_path,
    }
