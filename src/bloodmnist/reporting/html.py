"""report.html: one self-contained page (inline CSS, figures as base64 data URIs, no scripts)."""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bloodmnist.atomic import write_text_atomic
from bloodmnist.evaluation.run_files import (
    CALIBRATION_HEADER,
    FIGURES_DIR,
    calibration_rows,
    class_names,
    history_columns,
    is_from_scratch,
    load_history,
    load_manifest,
    load_predictions,
    load_summary,
    report_metrics,
)
from bloodmnist.reporting.figures import FIGURE_NAMES, MODEL_FIGURE_NAMES, save_figures

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f6f8fa;
color:#1f2328}
main{max-width:1200px;margin:0 auto;padding:24px 32px;background:#fff}
h1{margin-top:0;font-size:1.7em}
h2{border-bottom:1px solid #d0d7de;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:0.9em}
th,td{border:1px solid #d0d7de;padding:4px 10px;text-align:right}
th{background:#eef1f4}td.l,th.l{text-align:left}
tbody tr:nth-child(even){background:#f9fafb}
table.headline td,table.headline th{font-size:1.15em;padding:8px 18px}
.note{background:#fff8c5;border:1px solid #d4a72c;padding:8px 12px;border-radius:6px;
display:inline-block;font-weight:600}
figure{margin:16px 0}figure img{max-width:100%;border:1px solid #d0d7de}
figcaption{color:#59636e;font-size:0.9em}
.scroll{overflow-x:auto}pre{background:#f6f8fa;padding:12px;overflow-x:auto}
"""
FIGURE_CAPTIONS = {
    "confusion_matrix": "Test confusion matrix with TTA, rows normalised to the true class.",
    "training_curves": "Loss, accuracy and learning rate per epoch.",
    "sample_predictions": "First test images: true (T) and TTA-predicted (P) class.",
    "dataset_samples": "Training images for each class.",
    "reliability_diagram": (
        "Reliability diagram: accuracy per confidence bin against the diagonal of perfect "
        "calibration (15 equal-width bins); with temperature scaling, the bins after it."
    ),
    "gradcam": (
        "Grad-CAM (where the model looked) for the predicted class: per class the first "
        "correctly classified and the first misclassified test image, with its overlay."
    ),
}


def fmt(value: Any, digits: int = 4) -> str:
    """Display text for a cell: floats to ``digits`` places, None/NaN as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        # Learning rates like 1e-5 would print as 0.0000 in fixed point.
        small = value != 0 and abs(value) < 10 ** (1 - digits)
        return f"{value:.3e}" if small else f"{value:.{digits}f}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def fmt_seconds(seconds: Any) -> str:
    """``3723.4`` -> ``"1 h 02 min 03 s"``; other values via :func:`fmt`."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return fmt(seconds)
    total = int(round(seconds))
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    return f"{h} h {m:02d} min {s:02d} s" if h else f"{m} min {s:02d} s"


def _cell(tag: str, value: Any, left: bool) -> str:
    cls = ' class="l"' if left else ""
    return f"<{tag}{cls}>{html.escape(fmt(value))}</{tag}>"


def table(
    header: Sequence[Any], rows: Iterable[Sequence[Any]], cls: str = "", left_cols: int = 1
) -> str:
    """An HTML table, every cell escaped; the first ``left_cols`` columns are left-aligned."""
    head = "".join(_cell("th", h, i < left_cols) for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(_cell("td", v, i < left_cols) for i, v in enumerate(row)) + "</tr>"
        for row in rows
    )
    attr = f' class="{html.escape(cls)}"' if cls else ""
    return (
        f'<div class="scroll"><table{attr}><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _headline(summary: dict[str, Any], plain: dict, tta: dict | None) -> str:
    rows = [
        (
            label,
            summary.get(f"test_{key}", plain[key]),
            summary.get(f"test_{key}_tta", tta[key] if tta else None),
        )
        for label, key in (("Accuracy", "acc"), ("Macro-F1", "macro_f1"), ("AUC (MedMNIST)", "auc"))
    ]
    return table(["Test metric", "plain", "TTA"], rows, cls="headline")


def _run_info(summary: dict[str, Any]) -> str:
    best = summary.get("best_epoch")
    best_acc = summary.get("best_val_acc")
    rows = [
        ("device", summary.get("device")),
        ("precision", summary.get("precision")),
        ("pretrained", summary.get("pretrained")),
        ("seed", summary.get("seed")),
        ("trained on", _trained_on(summary)),
        ("epochs run", summary.get("epochs_run")),
        ("best epoch", f"{fmt(best)} (val acc {fmt(best_acc)}{_in_training(summary)})"),
        ("train time", fmt_seconds(summary.get("train_seconds"))),
        ("data MD5", summary.get("data_md5")),
        ("status", summary.get("status", "not recorded")),
    ]
    return table(["item", "value"], rows, left_cols=2)


def _in_training(summary: dict[str, Any]) -> str:
    return ", on images it trained on" if summary.get("train_on") == "train+val" else ""


def _trained_on(summary: dict[str, Any]) -> str:
    if summary.get("train_on") == "train+val":  # validation numbers are on training images
        return "train + val (data.train_on): validation is not held out"
    return "train (validation held out)"


def _confusion(names: list[str], cm: list[list[int]]) -> str:
    """Counts table shaded by the row-normalised fraction, like the figure."""
    head = '<th class="l">true \\ predicted</th>' + "".join(
        f"<th>{html.escape(n)}</th>" for n in names
    )
    body = []
    for name, row in zip(names, cm, strict=True):
        total = sum(row) or 1
        cells = []
        for count in row:
            frac = count / total
            colour = "#fff" if frac > 0.6 else "#1f2328"  # keep text readable on dark shading
            style = f"background:rgba(31,111,235,{frac:.3f});color:{colour}"
            cells.append(f'<td style="{style}">{int(count)}</td>')
        body.append(f'<tr><th class="l">{html.escape(name)}</th>{"".join(cells)}</tr>')
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _figures(run_dir: Path) -> str:
    fig_dir = run_dir / FIGURES_DIR
    if not all((fig_dir / f"{n}.png").is_file() for n in FIGURE_NAMES):
        save_figures(run_dir)
    parts = []
    extra = [n for n in MODEL_FIGURE_NAMES if (fig_dir / f"{n}.png").is_file()]
    for name in (*FIGURE_NAMES, *extra):
        data = base64.b64encode((fig_dir / f"{name}.png").read_bytes()).decode("ascii")
        caption = html.escape(FIGURE_CAPTIONS[name])
        parts.append(
            f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    return "\n".join(parts)


def _per_class(plain: dict, tta: dict | None) -> str:
    """Per-class scores, plain and (where the run evaluated it: `tta`) with TTA."""
    header = ["class", "precision", "recall", "F1"]
    if tta is not None:
        header += ["precision (TTA)", "recall (TTA)", "F1 (TTA)"]
    rows = [
        (p["class"], p["precision"], p["recall"], p["f1"])
        + ((t["precision"], t["recall"], t["f1"]) if tta is not None else ())
        + (p["support"],)
        for p, t in zip(plain["per_class"], (tta or plain)["per_class"], strict=True)
    ]
    return table([*header, "support"], rows)


def _history_cell(column: str, value: Any) -> Any:
    """Learning rates all in scientific notation so the column reads consistently."""
    if column == "lr" and isinstance(value, float):
        return f"{value:.3e}"
    return value


def write_html(run_dir: Path) -> Path:
    """Write ``run_dir/report.html``; renders missing figures first."""
    run_dir = Path(run_dir)
    summary = load_summary(run_dir)
    history = load_history(run_dir)
    preds = load_predictions(run_dir)
    plain, tta = report_metrics(summary, preds)
    title = f"BloodMNIST run report: {run_dir.resolve().name}"
    scratch = (
        '<p class="note">Trained from scratch (no ImageNet weights)</p>'
        if is_from_scratch(summary)
        else ""
    )
    columns = history_columns(history, run_dir)
    config = run_dir / "config.yaml"
    config_html = (
        "<details><summary>config.yaml</summary><pre>"
        f"{html.escape(config.read_text(encoding='utf-8', errors='replace'))}</pre></details>"
        if config.is_file()
        else "<p>No config.yaml in the run folder.</p>"
    )
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        scratch,
        f"<h2>Test metrics (n={html.escape(fmt(plain.get('n')))})</h2>",
        _headline(summary, plain, tta),
        "<h2>Run</h2>",
        _run_info(summary),
        "<h2>Calibration (test)</h2>",
        table(CALIBRATION_HEADER, calibration_rows(summary, preds)),
        "<h2>Figures</h2>",
        _figures(run_dir),
        "<h2>Per-class scores</h2>",
        _per_class(plain, tta),
        f"<h2>Confusion matrix ({'TTA' if tta else 'plain'}, counts)</h2>",
        _confusion(class_names(preds), (tta or plain)["confusion"]),
        "<h2>Training history</h2>",
        table(columns, ([_history_cell(c, r.get(c)) for c in columns] for r in history)),
        "<h2>Manifest</h2>",
        table(["key", "value"], load_manifest(run_dir).items(), left_cols=2),
        "<h2>Configuration</h2>",
        config_html,
    ]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n"
        f"<body><main>\n{chr(10).join(s for s in sections if s)}\n</main></body></html>\n"
    )
    path = run_dir / "report.html"
    write_text_atomic(path, page)
    return path
