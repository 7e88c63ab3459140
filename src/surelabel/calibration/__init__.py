"""Calibration: make label probabilities honest, fitted on the user's labelled rows.

Estimators follow the scikit-learn contract (``fit`` returns ``self``, learned state ends
in ``_``); every calibrator has ``calibrate(distribution, label=None)``, the hook
:class:`~surelabel.classifier.Classifier` calls. :class:`Calibration` bundles a fitted
calibrator with its routing settings and is saved as a versioned JSON file tied to the
task, model and prompt.
"""

# The registry first: it imports the calibrator families in the order ``auto`` tries them.
from surelabel.calibration.registry import CALIBRATORS, make_calibrator

# isort: split
from surelabel.calibration.base import BaseCalibrator
from surelabel.calibration.binary import IsotonicCalibration, PlattScaling
from surelabel.calibration.contextual import CONTENT_FREE, ContextualCalibration
from surelabel.calibration.dirichlet import DirichletCalibration
from surelabel.calibration.file import Calibration, load, prompt_hash
from surelabel.calibration.fit import (
    calibration_view,
    fit_calibration,
    label_indices,
    top_label_view,
)
from surelabel.calibration.per_label import PerLabelCalibrator
from surelabel.calibration.temperature import BiasTemperatureScaling, TemperatureScaling
from surelabel.calibration.top_label import TopLabelCalibration

__all__ = [
    "CALIBRATORS",
    "CONTENT_FREE",
    "BaseCalibrator",
    "BiasTemperatureScaling",
    "Calibration",
    "ContextualCalibration",
    "DirichletCalibration",
    "IsotonicCalibration",
    "PerLabelCalibrator",
    "PlattScaling",
    "TemperatureScaling",
    "TopLabelCalibration",
    "calibration_view",
    "fit_calibration",
    "label_indices",
    "load",
    "make_calibrator",
    "prompt_hash",
    "top_label_view",
]
