"""The run folder: creation, lock file, log file, manifest and small atomic writers."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bloodmnist.atomic import read_json, write_text_atomic
from bloodmnist.errors import BloodMNISTError, OutputError, RunLockedError

log = logging.getLogger("bloodmnist")
LOCK_NAME = "run.lock"


def new_run_dir(out: str | Path, name: str, explicit: bool) -> Path:
    """`explicit`: --out names the run folder itself; else runs/<YYYYmmdd-HHMMSS>-<name>/."""
    base = Path(out)
    path = base if explicit else base / f"{dt.datetime.now():%Y%m%d-%H%M%S}-{name}"
    if (path / LOCK_NAME).exists():
        RunLock(path).check_free()  # a live run there: say so (and by whom), not just "not empty"
    if path.exists() and any(p.name != LOCK_NAME for p in path.iterdir()):
        raise BloodMNISTError(
            f"run folder {path} is not empty; pick a new --out, or continue it with --resume {path}"
        )
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only checks existence: nothing is killed
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: An unreadable lock file older than this is stale: writing the pid takes microseconds.
UNREADABLE_LOCK_AGE_S = 30


class RunLock:
    """Exclusive lock on a run folder: O_EXCL lock file holding host and pid.

    A second process refuses with a clear error; a lock left by a dead process on this host is
    taken over with a message.
    """

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_NAME
        self.held = False
        self.took_over: str | None = None  # stale-lock message; the caller logs it (train.log)

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._check_stale()
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self.held = True
            return
        raise RunLockedError(f"could not lock {self.path}")

    def _owner(self) -> tuple[object, object]:
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            owner = {}
        return owner.get("pid"), owner.get("host")

    def _is_stale(self, pid: object, host: object) -> bool:
        if pid is None and host is None:  # unreadable: its writer died between create and write
            try:
                return time.time() - self.path.stat().st_mtime > UNREADABLE_LOCK_AGE_S
            except OSError:
                return False
        return isinstance(pid, int) and host == socket.gethostname() and not _pid_alive(pid)

    def _check_stale(self) -> None:
        if not self.path.exists():  # its owner just finished: try again
            return
        pid, host = self._owner()
        if self._is_stale(pid, host):
            gone = f"process {pid} is gone" if pid is not None else "unreadable, left by a crash"
            self.took_over = f"taking over stale lock {self.path} ({gone})"
            self.path.unlink(missing_ok=True)
            return
        raise RunLockedError(
            f"run folder {self.path.parent} is in use by process {pid} on {host}; wait for it to "
            f"finish or use another --out (delete {self.path} only if that process is gone)"
        )

    def check_free(self) -> None:
        """Raise RunLockedError if another process holds the lock; a stale one is left alone."""
        if self.path.exists() and not self._is_stale(*self._owner()):
            self._check_stale()

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


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
    import torchvision

    from bloodmnist import __version__

    return {
        "bloodmnist": __version__,
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "command": sys.argv,
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        **extra,
    }


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
