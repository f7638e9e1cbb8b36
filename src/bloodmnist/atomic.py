"""Atomic file writes (every file the tool writes appears whole or not at all), and JSON reads
that fail in one line.

One helper for run-folder files, checkpoints, predictions, results and exported models. The data
goes to a hidden temp file beside the target (`.<name>.<random>.tmp`, a name
`training.rundir.remove_stale_temps` recognises), is fsynced, then renamed over the target, so a
crash, a full disk or Ctrl-C leaves the previous file (or none) and no temp file. Temp files are
created with the user's umask, unlike `tempfile.mkstemp`'s 0600. With `exclusive` the finished
file is published only where no file exists at that moment (a hard link, which never replaces):
outputs the user named are checked before the work starts, and this closes the window between
that check and the write, in which another process may have created the file.
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
def atomic_open(
    path: Path, binary: bool = True, exclusive: bool = False, **open_kwargs: Any
) -> Iterator[IO[Any]]:
    """`with atomic_open(p) as fh: fh.write(...)`: on success fsync and rename onto `p`.

    Any exception (OSError from a full disk included) removes the temp file and propagates.
    `exclusive`: never replace an existing `p`; FileExistsError instead (nothing is written).
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        with tmp.open("xb" if binary else "x", **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        publish_new(tmp, path) if exclusive else os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def publish_new(tmp: Path, path: Path) -> None:
    """Give `tmp` the name `path` unless that name exists (FileExistsError)."""
    try:
        os.link(tmp, path)  # atomic, and fails where `path` exists
    except FileExistsError:
        raise FileExistsError(f"{path} already exists; nothing was overwritten") from None
    except OSError:  # a filesystem without hard links: check, then rename
        if path.exists():
            raise FileExistsError(f"{path} already exists; nothing was overwritten") from None
        os.replace(tmp, path)


def write_bytes_atomic(path: Path, data: bytes | memoryview, exclusive: bool = False) -> None:
    with atomic_open(path, exclusive=exclusive) as fh:
        fh.write(data)


def write_text_atomic(path: Path, text: str, exclusive: bool = False) -> None:
    with atomic_open(path, False, exclusive, encoding="utf-8", newline="") as fh:
        fh.write(text)


def check_new_file(path: Path, option: str) -> None:
    """At a command's start: the output the user named with `option` must be a free name in
    an existing folder (write_text_new writes it at the end), so no work is done in vain."""
    from bloodmnist.errors import BloodMNISTError

    if path.exists() or path.is_symlink():  # a dangling link too: the name is taken
        raise BloodMNISTError(f"{path} already exists; choose a new {option} file")
    if not path.parent.is_dir():
        raise BloodMNISTError(f"{option} {path}: folder {path.parent} does not exist")


def write_text_new(path: Path, text: str, option: str) -> None:
    """write_text_atomic(exclusive=True) for an output the user named with `option` and that
    was checked to be free at the start: a file created there meanwhile (another process) is
    kept, and the refusal is one BloodMNISTError line."""
    from bloodmnist.errors import BloodMNISTError

    try:
        write_text_atomic(path, text, exclusive=True)
    except FileExistsError:
        raise BloodMNISTError(
            f"{option} {path} appeared while this command ran and was not replaced; choose a "
            "new name"
        ) from None


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
