"""surelabel: classify text with a language model and say how sure it is.

Importing surelabel loads no model and opens no connection.
"""

from surelabel.backends import Backend, Capabilities, make_backend
from surelabel.backends.llamacpp import LlamaCppBackend, default_model_path
from surelabel.classifier import Calibrator, Classifier, Record
from surelabel.distribution import LabelDistribution
from surelabel.errors import (
    BackendError,
    CalibrationError,
    InputError,
    MissingLogprobsError,
    ModelLoadError,
    NotFittedError,
    OffSchemaError,
    SurelabelError,
    TaskError,
    UnsupportedMethodError,
    UserError,
)
from surelabel.io import read_rows
from surelabel.policy import decide
from surelabel.task import Example, Label, Task, Thresholds, load_task

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendError",
    "CalibrationError",
    "Calibrator",
    "Capabilities",
    "Classifier",
    "Example",
    "InputError",
    "Label",
    "LabelDistribution",
    "LlamaCppBackend",
    "MissingLogprobsError",
    "ModelLoadError",
    "NotFittedError",
    "OffSchemaError",
    "Record",
    "SurelabelError",
    "Task",
    "TaskError",
    "Thresholds",
    "UnsupportedMethodError",
    "UserError",
    "__version__",
    "decide",
    "default_model_path",
    "load_task",
    "make_backend",
    "read_rows",
]
