"""`bloodmnist runs`: one line per run folder found under a folder, from its files alone."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import yaml

from bloodmnist.config import DEFAULT_RECIPE

COLUMNS = (
    ("name", "run"),
    ("recipe", "recipe"),
    ("arch", "arch"),
    ("seed", "seed"),
    ("epochs", "epochs"),
    ("val_acc", "best val acc"),
    ("test_acc", "test acc"),
    ("test_acc_tta", "test TTA"),
    ("pflop", "PFLOP"),
    ("seconds", "wall time"),
    ("status", "status"),
)
SORT_KEYS = tuple(k for k, _ in COLUMNS)
#: Sorted best first; the other keys sort ascending.
DESCENDING = {"val_acc", "test_acc", "test_acc_tta", "pflop", "seconds", "epochs"}


def _read(path: Path, loader: Any) -> Any:
    try:
        with path.open(encoding="utf-8") as fh:
            return loader(fh)
    except (OSError, ValueError, yaml.YAMLError):
        return None


def _history(run_dir: Path) -> list[dict[str, str]]:
    rows = _read(run_dir / "history.csv", lambda fh: list(csv.DictReader(fh)))
    return rows or []


def _recipe(command: list[str] | None) -> str:
    """What the run was started from: --recipe NAME, --config FILE's stem, or a search trial."""
    args = list(command or [])
    if any("bloodmnist.tuning" in a or "bloodmnist/tuning" in a for a in args[:3]):
        return "tune trial"
    for flag, show in (("--recipe", str), ("--config", lambda v: Path(v).stem)):
        for i in reversed(range(len(args))):  # the last occurrence wins, as in argparse
            a = args[i]
            if a == flag and i + 1 < len(args):
                return show(args[i + 1])
            if a.startswith(flag + "="):
                return show(a.split("=", 1)[1])
    return DEFAULT_RECIPE


def _status(run_dir: Path, summary: dict[str, Any]) -> str:
    if summary.get("status"):
        return str(summary["status"])
    from bloodmnist.errors import RunLockedError
    from bloodmnist.training.runlock import RunLock

    try:
        RunLock(run_dir).check_free()
    except RunLockedError:
        return "running"
    return "stopped" if (run_dir / "checkpoints" / "last.pt").is_file() else "empty"


def _mapping(value: Any) -> dict[str, Any]:
    """A file's or section's mapping; {} for anything else (a folder the tool did not write)."""
    return value if isinstance(value, dict) else {}


def _numbers(rows: list[dict[str, str]], key: str) -> list[float]:
    out = []
    for row in rows:
        try:
            out.append(float(row.get(key) or ""))
        except (TypeError, ValueError):
            continue
    return out


def describe_run(run_dir: Path, root: Path) -> dict[str, Any]:
    """The table's fields for one run folder; what a file does not say stays None."""
    cfg = _mapping(_read(run_dir / "config.yaml", yaml.safe_load))
    summary = _mapping(_read(run_dir / "summary.json", json.load))
    manifest = _mapping(_read(run_dir / "manifest.json", json.load))
    history = _history(run_dir)
    model, train = _mapping(cfg.get("model")), _mapping(cfg.get("train"))
    arch, width = model.get("arch"), model.get("width")
    if arch and isinstance(width, int | float) and width != 1.0:
        arch = f"{arch} x{width:g}"
    vals = _numbers(history, "val_acc")
    seconds = summary.get("train_seconds")
    if seconds is None and history:
        seconds = sum(_numbers(history, "seconds"))
    if seconds is not None and summary.get("test_eval_seconds"):
        seconds += summary["test_eval_seconds"]
    return {
        "name": str(run_dir.relative_to(root)) if run_dir != root else run_dir.name,
        "recipe": _recipe(manifest.get("command")),
        "arch": arch,
        "seed": train.get("seed"),
        "epochs": summary.get("epochs_run", len(history) if history else None),
        "epochs_max": train.get("epochs"),
        "val_acc": summary.get("best_val_acc", max(vals) if vals else None),
        "test_acc": summary.get("test_acc"),
        "test_acc_tta": summary.get("test_acc_tta"),
        "pflop": summary.get("train_pflop"),
        "seconds": seconds,
        "status": _status(run_dir, summary),
    }


def find_runs(root: Path, sort: str = "name") -> list[dict[str, Any]]:
    """Every run folder (a config.yaml beside history.csv, summary.json or checkpoints/)."""
    if sort not in SORT_KEYS:
        from bloodmnist.errors import BloodMNISTError

        raise BloodMNISTError(f"--sort must be one of {', '.join(SORT_KEYS)}, got {sort!r}")
    dirs = sorted(
        {
            p.parent
            for p in root.rglob("config.yaml")
            if any((p.parent / f).exists() for f in ("history.csv", "summary.json", "checkpoints"))
        }
    )
    rows = [describe_run(d, root) for d in dirs]
    present = [r for r in rows if r[sort] is not None]
    present.sort(key=lambda r: r[sort], reverse=sort in DESCENDING)
    return present + [r for r in rows if r[sort] is None]


def _cell(key: str, row: dict[str, Any]) -> str:
    v = row[key]
    if v is None:
        return "-"
    if key == "epochs":
        return f"{v}/{row['epochs_max']}" if row.get("epochs_max") else str(v)
    if key in ("val_acc", "test_acc", "test_acc_tta"):
        return f"{v:.4f}"
    if key == "pflop":
        return f"{v:.3g}"
    if key == "seconds":
        m, s = divmod(int(round(v)), 60)
        h, m = divmod(m, 60)
        return f"{h}:{m:02d}:{s:02d}"
    return str(v)


def format_table(rows: list[dict[str, Any]], root: Path) -> str:
    """A plain-text table, columns padded to their widest cell."""
    header = [title for _, title in COLUMNS]
    cells = [[_cell(k, r) for k, _ in COLUMNS] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    left = {0, 1, 2, 10}
    lines = []
    for line in (header, *cells):
        pairs = enumerate(zip(line, widths, strict=True))
        parts = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in pairs]
        lines.append("  ".join(parts).rstrip())
    return "\n".join([f"{len(rows)} run(s) under {root}", *lines])
