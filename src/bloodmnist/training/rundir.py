"""The run folder: creation, lock file, log file, manifest and small atomic writers."""

from __future__ import annotations

import datetime as dt
import json
import logging
import platform
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bloodmnist.atomic import read_json, write_text_atomic
from bloodmnist.errors import BloodMNISTError, OutputError
from bloodmnist.training.runlock import LOCK_NAME, RunLock

log = logging.getLogger("bloodmnist")


def new_run_dir(out: str | Path, name: str, explicit: bool) -> Path:
    """`explicit`: --out names the run folder itself; else runs/<YYYYmmdd-HHMMSS>-<name>/."""
    base = Path(out)
    path = base if explicit else base / f"{dt.datetime.now():%Y%m%d-%H%M%S}-{name}"
    if (path / LOCK_NAME).exists():
        RunLock(path).check_free()  # a live run there: say so (and by whom), not just "not empty"
    if path.exists() and not failed_setup_only(path):
        raise BloodMNISTError(_not_empty(path))
    try:
        (path / "checkpoints").mkdir(parents=True, exist_ok=True)
        (path / "figures").mkdir(exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise BloodMNISTError(
            f"cannot write to run folder {path} ({exc.strerror}); choose a writable --out"
        ) from None
    return path


def _not_empty(path: Path) -> str:
    """Why a new run may not use `path`, and what to do instead."""
    if (path / "checkpoints" / "last.pt").is_file():
        return (
            f"run folder {path} is not empty; pick a new --out, or continue it with --resume {path}"
        )
    if (path / "train.log").is_file():
        return (
            f"run folder {path} is not empty, and holds no checkpoint to resume (a run there "
            "stopped before its first epoch ended); pick a new --out, or delete that folder"
        )
    return f"--out {path} is not empty and is not a run folder; pick a new or empty folder"


def failed_setup_only(path: Path) -> bool:
    """Whether `path` holds at most what a run that failed during its setup leaves (train.log
    with the error, empty checkpoints/ and figures/): a new run may use it and appends to the
    log. Anything else (a config, a checkpoint, a user's file) keeps the folder refused."""
    for p in path.iterdir():
        if p.name in (LOCK_NAME, "train.log") and p.is_file():
            continue
        if p.name in ("checkpoints", "figures") and p.is_dir() and not any(p.iterdir()):
            continue
        return False
    return True


# The temp names bloodmnist.atomic gives a file while it is written (`.<name>.<random>.tmp`).
_TEMP_NAME = re.compile(r"^\..+\.[0-9A-Za-z]+\.tmp$")


def remove_stale_temps(run_dir: Path) -> list[Path]:
    """Delete temp files that a killed process left mid-save (`.last.pt.<random>.tmp` etc.).

    Only names our atomic writers make, and only under the run lock, so nothing else can be
    writing them. Returns what was removed, for the log.
    """
    removed = []
    for folder in (run_dir, run_dir / "checkpoints"):
        for p in folder.glob(".*") if folder.is_dir() else ():
            if p.is_file() and _TEMP_NAME.match(p.name):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def setup_logging(run_dir: Path | None, verbose: bool = True) -> None:
    """Console + train.log handlers on the package logger."""
    logger = logging.getLogger("bloodmnist")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    if verbose:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(fmt)
        logger.addHandler(console)
    if run_dir is not None:
        fh = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
        fh.setFormatter(fmt)
        logger.addHandler(fh)


def write_run_text(path: Path, text: str) -> None:
    """Atomic write of a run-folder text file; a full disk becomes one OutputError line."""
    try:
        write_text_atomic(path, text)
    except OSError as exc:
        raise OutputError.from_os(path, exc) from None


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_run_text(path, json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")


HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_auc",
    "lr",
    "seconds",
)


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite history.csv whole (atomic) so it always matches the last checkpoint."""
    lines = [",".join(HISTORY_COLUMNS)]
    for row in rows:
        lines.append(",".join(_fmt(row[c]) for c in HISTORY_COLUMNS))
    write_run_text(path, "\n".join(lines) + "\n")


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _git_commit() -> str | None:
    src = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def build_manifest(extra: dict[str, Any]) -> dict[str, Any]:
    """Versions, git commit, command line and host facts; `extra` adds data/device/pretrained."""
    import numpy
    import torch

    from bloodmnist import __version__

    return {
        "bloodmnist": __version__,
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _torchvision_version(),
        "numpy": numpy.__version__,
        "command": sys.argv,
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        **extra,
    }


def _torchvision_version() -> str:
    """torchvision's `__version__` (build tag included, e.g. 0.29.1+cu130) without importing it
    where it is not loaded yet (~0.3 s in a training process, ~1 s where no optimizer has loaded
    torch._dynamo); "unknown" rather than a failed run if it cannot be found."""
    import importlib.metadata
    import importlib.util

    if "torchvision" in sys.modules:
        return str(sys.modules["torchvision"].__version__)
    try:
        spec = importlib.util.find_spec("torchvision")
        if spec is None or spec.origin is None:
            return "not installed"
        version_py = Path(spec.origin).with_name("version.py")
        found = re.search(
            r"^__version__ = ['\"]([^'\"]+)['\"]", version_py.read_text(errors="replace"), re.M
        )
        return found.group(1) if found else importlib.metadata.version("torchvision")
    except (OSError, ValueError, importlib.metadata.PackageNotFoundError):
        return "unknown"


def write_manifest(run_dir: Path, setup: Callable[[], dict[str, Any]], resumed: bool) -> None:
    """Write manifest.json. A resumed run keeps its first manifest and appends the restart time,
    so the record of what the run started with (data hash, device, pretrained) stays."""
    path = run_dir / "manifest.json"
    if resumed and path.is_file():
        manifest = read_json(path)
        manifest.setdefault("resumed", []).append(dt.datetime.now().isoformat(timespec="seconds"))
        write_json(path, manifest)
        return
    write_json(path, build_manifest(setup()))
