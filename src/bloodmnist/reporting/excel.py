"""report.xlsx from a run folder, written with openpyxl only (no pandas)."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from openpyxl import Workbook
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE, Cell
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.worksheet import Worksheet

from bloodmnist.atomic import atomic_open
from bloodmnist.evaluation.run_files import (
    CALIBRATION_HEADER,
    calibration_rows,
    class_names,
    history_columns,
    load_history,
    load_manifest,
    load_predictions,
    load_summary,
    report_metrics,
)

BOLD = Font(bold=True)
# Nested metric dicts get their own sheets; in the key/value sheet they would be unreadable blobs.
NESTED_SUMMARY_KEYS = ("test", "test_tta")


def _cell_value(value: Any) -> Any:
    """Numbers and booleans as-is; strings without the control characters a workbook cannot
    hold; None blank; containers as compact JSON text."""
    if isinstance(value, str):
        return ILLEGAL_CHARACTERS_RE.sub("", value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if hasattr(value, "item"):  # numpy scalar
        return value.item()
    return json.dumps(value, default=str)


def _as_text(cells: Sequence[Cell]) -> None:
    """Strings stay text: one starting with '=' (a class name from a data file, say) would
    otherwise be stored as a live formula."""
    for cell in cells:
        if isinstance(cell.value, str):
            cell.data_type = "s"


def write_table(ws: Worksheet, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Header in bold, frozen below it, then rows; columns sized to their longest text."""
    ws.append([_cell_value(h) for h in header])
    _as_text(ws[1])
    for cell in ws[1]:
        cell.font = BOLD
    for row in rows:
        ws.append([_cell_value(v) for v in row])
        _as_text(ws[ws.max_row])
    ws.freeze_panes = "A2"
    for idx, col in enumerate(ws.iter_cols(values_only=True), start=1):
        width = max(len(str(v)) if v is not None else 0 for v in col)
        ws.column_dimensions[get_column_letter(idx)].width = min(max(10, width + 2), 60)


def _per_class_rows(plain: dict, tta: dict | None) -> list[list[Any]]:
    """Plain and (where the run evaluated it: `tta`) TTA scores per class, then the support."""
    rows = []
    for p, t in zip(plain["per_class"], (tta or plain)["per_class"], strict=True):
        scores = [t["precision"], t["recall"], t["f1"]] if tta is not None else []
        rows.append([p["class"], p["precision"], p["recall"], p["f1"], *scores, p["support"]])
    return rows


def write_excel(run_dir: Path) -> Path:
    """Write ``run_dir/report.xlsx`` (summary, history, per_class, calibration, confusion,
    manifest sheets)."""
    run_dir = Path(run_dir)
    summary = load_summary(run_dir)
    history = load_history(run_dir)
    preds = load_predictions(run_dir)
    plain, tta = report_metrics(summary, preds)

    wb = Workbook()
    ws = wb.active
    ws.title = "summary"
    items = [(k, v) for k, v in summary.items() if k not in NESTED_SUMMARY_KEYS]
    write_table(ws, ["key", "value"], items)

    columns = history_columns(history, run_dir)
    write_table(wb.create_sheet("history"), columns, ([r.get(c) for c in columns] for r in history))

    per_class_header = ["class", "precision", "recall", "f1"]
    per_class_header += ["precision_tta", "recall_tta", "f1_tta"] if tta else []
    rows = _per_class_rows(plain, tta)
    write_table(wb.create_sheet("per_class"), [*per_class_header, "support"], rows)

    write_table(
        wb.create_sheet("calibration"), CALIBRATION_HEADER, calibration_rows(summary, preds)
    )

    names = class_names(preds)
    ws = wb.create_sheet("confusion")
    write_table(
        ws,
        [f"true \\ predicted ({'TTA' if tta else 'plain'})", *names],
        ([name, *row] for name, row in zip(names, (tta or plain)["confusion"], strict=True)),
    )
    for cell in ws["A"]:
        cell.font = BOLD

    write_table(wb.create_sheet("manifest"), ["key", "value"], load_manifest(run_dir).items())

    path = run_dir / "report.xlsx"
    save_workbook(wb, path)
    return path


#: The time stamped into a workbook's properties and zip entries: fixed, so a report rebuilt
#: from the same run folder is the same file, byte for byte (openpyxl stamps "now").
STAMP = dt.datetime(2000, 1, 1)
ISO_STAMP = b"2000-01-01T00:00:00Z"


def save_workbook(wb: Workbook, path: Path) -> None:
    """Save `wb` atomically (never a half-written workbook where a reader expects one) and
    reproducibly (fixed time stamps)."""
    wb.properties.created = STAMP
    raw = io.BytesIO()
    wb.save(raw)
    stable = io.BytesIO()
    with zipfile.ZipFile(raw) as src, zipfile.ZipFile(stable, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "docProps/core.xml":  # save() stamps "modified" itself
                data = re.sub(rb"(<dcterms:modified[^>]*>)[^<]*", rb"\g<1>" + ISO_STAMP, data)
            entry = zipfile.ZipInfo(item.filename, date_time=STAMP.timetuple()[:6])
            entry.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(entry, data)
    with atomic_open(path) as fh:
        fh.write(stable.getvalue())
