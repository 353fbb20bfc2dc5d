"""Errors that mean "the input is wrong": the CLIs print them as one line and exit non-zero."""

class MeminfError(Exception):
    """Base class: the message says what is wrong and what to do."""


class ConfigError(MeminfError):
    """A configuration value is invalid."""


class DataError(MeminfError):
    """A data set is missing, malformed or inconsistent."""


class ModelError(MeminfError):
    """A model cannot be built for the given data."""


class RecordError(MeminfError):
    """A record file is unreadable or breaks the record contract."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class TrainingError(MeminfError):
    """Training failed (e.g. the loss diverged); no record is written."""
