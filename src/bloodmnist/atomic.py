"""Atomic file writes (every file the tool writes appears whole or not at all), and JSON reads
that fail in one line.

One helper for run-folder files, checkpoints, predictions, results and exported models. The data
goes to a hidden temp file beside the target (`.<name>.<random>.tmp`, a name
`training.rundir.remove_stale_temps` recognises), is fsynced, then renamed over the target, so a
crash, a full disk or Ctrl-C leaves the previous file (or none) and no temp file. Temp files are
created with the user's umask, unlike `tempfile.mkstemp`'s 0600.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def temp_path(path: Path) -> Path:
    """A fresh hidden name beside `path`, for writers that need a path rather than a file."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


@contextmanager
def atomic_open(path: Path, binary: bool = True, **open_kwargs: Any) -> Iterator[IO[Any]]:
    """`with atomic_open(p) as fh: fh.write(...)`: on success fsync and rename onto `p`.

    Any exception (OSError from a full disk included) removes the temp file and propagates.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        with tmp.open("xb" if binary else "x", **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes | memoryview) -> None:
    with atomic_open(path) as fh:
        fh.write(data)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_open(path, binary=False, encoding="utf-8", newline="") as fh:
        fh.write(text)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or one BloodMNISTError line naming the file."""
    from bloodmnist.errors import BloodMNISTError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BloodMNISTError(
            f"{path} is not readable JSON ({exc}); restore it, or re-create it by re-running "
            "what wrote it"
        ) from None
    if not isinstance(data, dict):
        raise BloodMNISTError(f"{path} should hold a JSON object, not {type(data).__name__}")
    return data
