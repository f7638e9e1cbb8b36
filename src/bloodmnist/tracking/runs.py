"""`bloodmnist runs`: one line per run folder found under a folder, from its files alone."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import yaml

from bloodmnist.config import DEFAULT_RECIPE
from bloodmnist.config.yaml_text import load_text

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
#: summary.json fields that a running (resumed) training has not rewritten yet.
_LIVE_KEYS = (
    *("status", "epochs_run", "best_val_acc", "train_seconds", "test_eval_seconds"),
    *("test_acc", "test_acc_tta", "train_pflop"),
)
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
    """What the run was started from: --recipe NAME and/or --config FILE (its file name: a
    search's best.yaml is not the shipped `best` recipe), or a search trial."""
    args = list(command or [])
    if any("bloodmnist.tuning" in a or "bloodmnist/tuning" in a for a in args[:3]):
        return "tune trial"
    recipe, config = _flag(args, "--recipe"), _flag(args, "--config")
    said = [v for v in (recipe, Path(config).name if config else None) if v]
    return " + ".join(said) or DEFAULT_RECIPE


def _flag(args: list[str], flag: str) -> str | None:
    for i in reversed(range(len(args))):  # the last occurrence wins, as in argparse
        a = args[i]
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def _running(run_dir: Path) -> bool:
    """Held by a live training (a resumed run still has its old summary.json)."""
    from bloodmnist.errors import RunLockedError
    from bloodmnist.training.runlock import RunLock

    try:
        RunLock(run_dir).check_free()
    except RunLockedError:
        return True
    return False


def _status(run_dir: Path, summary: dict[str, Any], running: bool) -> str:
    if running:
        return "running"
    if isinstance(summary.get("status"), str) and summary["status"]:
        return summary["status"]
    return "stopped" if (run_dir / "checkpoints" / "last.pt").is_file() else "empty"


def _mapping(value: Any) -> dict[str, Any]:
    """A file's or section's mapping; {} for anything else (a folder the tool did not write)."""
    return value if isinstance(value, dict) else {}


def _num(value: Any) -> float | int | None:
    """A real number, else None: a hand-edited file must not break sorting or formatting."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return value if ok and value == value else None  # NaN sorts nowhere


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
    cfg = _mapping(_read(run_dir / "config.yaml", lambda fh: load_text(fh.read())))
    summary = _mapping(_read(run_dir / "summary.json", json.load))
    manifest = _mapping(_read(run_dir / "manifest.json", json.load))
    history = _history(run_dir)
    model, train = _mapping(cfg.get("model")), _mapping(cfg.get("train"))
    arch, width = model.get("arch"), model.get("width")
    arch = None if arch is None else str(arch)
    if arch and isinstance(width, int | float) and width != 1.0:
        arch = f"{arch} x{width:g}"
    vals = _numbers(history, "val_acc")
    running = _running(run_dir)
    if running:  # a resumed run's summary.json is from before: history.csv is current
        summary = {k: v for k, v in summary.items() if k not in _LIVE_KEYS}
    seconds = _num(summary.get("train_seconds"))
    if seconds is None and history:
        seconds = sum(_numbers(history, "seconds"))
    if seconds is not None and _num(summary.get("test_eval_seconds")):
        seconds += summary["test_eval_seconds"]
    epochs = _num(summary.get("epochs_run"))
    best = _num(summary.get("best_val_acc"))
    # data.train_on=train+val: its validation images are training images, no score to rank by
    train_on = _mapping(cfg.get("data")).get("train_on") or summary.get("train_on")
    val_in_train = train_on == "train+val"  # summary.json: an ensemble with such a member
    return {
        "name": str(run_dir.relative_to(root)) if run_dir != root else root.absolute().name,
        "recipe": _recipe(manifest.get("command")),
        "arch": arch,
        "seed": _num(train.get("seed")),
        "epochs": epochs if epochs is not None else (len(history) if history else None),
        "epochs_max": _num(train.get("epochs")),
        "val_acc": None if val_in_train else best if best is not None else max(vals, default=None),
        "val_in_train": val_in_train,
        "test_acc": _num(summary.get("test_acc")),
        "test_acc_tta": _num(summary.get("test_acc_tta")),
        "pflop": _num(summary.get("train_pflop")),
        "seconds": seconds,
        "status": _status(run_dir, summary, running),
    }


_MARKS = ("history.csv", "summary.json", "checkpoints")


def _is_run(d: Path) -> bool:
    return (d / "config.yaml").is_file() and any((d / f).exists() for f in _MARKS)


def _run_dirs(root: Path) -> list[Path]:
    """Folders with a config.yaml beside history.csv, summary.json or checkpoints/. A symlink
    is listed when it points at a run folder (a study's adopted seed), after the real folders,
    so a run reachable both ways is listed once, under its real path; links are not walked
    into, so a link to a large folder elsewhere (or to an ancestor) costs one check."""
    found: dict[Path, Path] = {}
    links: list[Path] = []
    for here, subdirs, files in os.walk(root):  # followlinks=False: links show up in subdirs
        d = Path(here)
        if "config.yaml" in files and _is_run(d):
            found.setdefault(d.resolve(), d)
        links += [d / name for name in subdirs if (d / name).is_symlink()]
    for link in sorted(links):
        if _is_run(link):
            found.setdefault(link.resolve(), link)
    return sorted(found.values())


def find_runs(root: Path, sort: str = "name") -> list[dict[str, Any]]:
    """Every run folder (a config.yaml beside history.csv, summary.json or checkpoints/)."""
    if sort not in SORT_KEYS:
        from bloodmnist.errors import BloodMNISTError

        raise BloodMNISTError(f"--sort must be one of {', '.join(SORT_KEYS)}, got {sort!r}")
    rows = [describe_run(d, root) for d in _run_dirs(root)]
    present = [r for r in rows if r[sort] is not None]
    present.sort(key=lambda r: r[sort], reverse=sort in DESCENDING)
    return present + [r for r in rows if r[sort] is None]


def _cell(key: str, row: dict[str, Any]) -> str:
    v = row[key]
    if key == "val_acc" and row.get("val_in_train"):
        return "in train"
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
