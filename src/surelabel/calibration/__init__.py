"""Calibration: make label probabilities honest, fitted on the user's labelled rows.

Estimators follow the scikit-learn contract (``fit`` returns ``self``, learned state ends
in ``_``); every calibrator has ``calibrate(distribution, label=None)``, the hook
:class:`~surelabel.classifier.Classifier` calls. :class:`Calibration` bundles a fitted
calibrator with its routing settings and is saved as a versioned JSON file tied to the
task, model and prompt.
"""

from surelabel.calibration.base import BaseCalibrator
from surelabel.calibration.file import Calibration, load, prompt_hash
from surelabel.calibration.fit import (
    calibration_view,
    fit_calibration,
    label_indices,
    top_label_view,
)
from surelabel.calibration.methods import (
    CALIBRATORS,
    CONTENT_FREE,
    BiasTemperatureScaling,
    ContextualCalibration,
    DirichletCalibration,
    IsotonicCalibration,
    PerLabelCalibrator,
    PlattScaling,
    TemperatureScaling,
    TopLabelCalibration,
    make_calibrator,
)

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
