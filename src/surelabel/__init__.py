"""surelabel: classify text with a language model and say how sure it is.

Importing surelabel loads no model and opens no connection.
"""

from surelabel.backends import (
    Backend,
    BackendSpec,
    BaseBackend,
    Capabilities,
    available_backends,
    make_backend,
)
from surelabel.backends.llamacpp import LlamaCppBackend, default_model_path
from surelabel.backends.openai import OpenAIBackend
from surelabel.cache import ResponseCache
from surelabel.calibration import Calibration, fit_calibration
from surelabel.calibration import load as load_calibration
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
from surelabel.methods import MethodOptions
from surelabel.policy import decide
from surelabel.routing import fit_accept_threshold
from surelabel.task import Example, Label, Task, Thresholds, load_task

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendError",
    "BackendSpec",
    "BaseBackend",
    "Calibration",
    "CalibrationError",
    "Calibrator",
    "Capabilities",
    "Classifier",
    "Example",
    "InputError",
    "Label",
    "LabelDistribution",
    "LlamaCppBackend",
    "MethodOptions",
    "MissingLogprobsError",
    "ModelLoadError",
    "NotFittedError",
    "OffSchemaError",
    "OpenAIBackend",
    "Record",
    "ResponseCache",
    "SurelabelError",
    "Task",
    "TaskError",
    "Thresholds",
    "UnsupportedMethodError",
    "UserError",
    "__version__",
    "available_backends",
    "decide",
    "default_model_path",
    "fit_accept_threshold",
    "fit_calibration",
    "load_calibration",
    "load_task",
    "make_backend",
    "read_rows",
]
