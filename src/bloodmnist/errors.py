"""User-facing errors: one clear, actionable line each; the CLI prints them without a traceback."""

from __future__ import annotations

import errno


class BloodMNISTError(Exception):
    """An error caused by user input or environment, with a message fit for one line."""

    exit_code = 2


class DataError(BloodMNISTError):
    """A data file is missing, malformed or fails verification."""


class DownloadError(BloodMNISTError):
    """A download could not be completed or verified."""


class ConfigError(BloodMNISTError):
    """A configuration file or override is invalid."""


class RunLockedError(BloodMNISTError):
    """Another live process holds the run folder."""


class CheckpointError(BloodMNISTError):
    """A checkpoint cannot be read or does not fit the model."""


class OutputError(BloodMNISTError):
    """A result file cannot be written (disk full, file-size limit, read-only or missing folder)."""

    @classmethod
    def from_os(cls, path: object, exc: OSError) -> OutputError:
        reason = exc.strerror or str(exc) or type(exc).__name__
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            fix = "free disk space (or raise the file-size limit, ulimit -f) and retry"
        else:
            fix = "check that the folder exists and is writable, or choose another --out"
        return cls(f"cannot write {path} ({reason}); {fix}")


class TrainingStopped(BloodMNISTError):
    """Training ended early on a signal or a diverging loss; the run folder says how to resume."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
