"""User-facing errors: one clear, actionable line each; the CLI prints them without a traceback."""


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


class TrainingStopped(BloodMNISTError):
    """Training ended early on a signal or a diverging loss; the run folder says how to resume."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
