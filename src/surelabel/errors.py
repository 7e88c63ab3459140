"""One error tree for surelabel.

``UserError`` and its children are mistakes the user can fix (a bad task file, a bad flag,
an unreadable input file, a missing model file); the CLI prints them as one line and exits
with code 2. ``BackendError`` and its children are failures of the model or the service
behind it; they say whether retrying can help.
"""

from __future__ import annotations


class SurelabelError(Exception):
    """Root of every error surelabel raises on purpose."""

    exit_code = 1


class UserError(SurelabelError):
    """Something the user asked for or gave us is wrong; fix the input and rerun."""

    exit_code = 2


class TaskError(UserError):
    """A task file or task definition is invalid."""


class InputError(UserError):
    """An input file or row stream cannot be read as asked."""


class ModelLoadError(UserError):
    """The model file is missing, unreadable or not a usable GGUF file."""


class CalibrationError(UserError):
    """A calibration file is missing, malformed or made for another task or model."""


class NotFittedError(SurelabelError, ValueError):
    """An estimator was used before ``fit``."""


class BackendError(SurelabelError):
    """The model or the service in front of it failed.

    Parameters
    ----------
    message:
        What went wrong, in one line.
    retryable:
        True when the same request may succeed later (rate limit, timeout, 5xx).
    """

    exit_code = 1

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class OffSchemaError(BackendError):
    """The model's output does not hold the expected JSON answer."""


class MissingLogprobsError(BackendError):
    """The backend returned no token log-probabilities where they were required."""


class UnsupportedMethodError(UserError):
    """The chosen confidence method needs a capability this backend does not have."""
