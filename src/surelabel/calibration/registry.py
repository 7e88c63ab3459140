"""The calibrator registry: every calibration method by name.

A calibrator registers itself by subclassing :class:`~surelabel.calibration.base.BaseCalibrator`
with a non-empty ``method``; this module imports the built-in families so that all of
them are registered, in the order ``auto`` tries them.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

# The built-in families, in the order ``auto`` tries their methods: a class registers
# itself when it is defined, so this import order is the order of CALIBRATORS (and the
# package imports this module before any family).
# isort: off
from surelabel.calibration import temperature
from surelabel.calibration import dirichlet
from surelabel.calibration import binary
from surelabel.calibration import contextual
from surelabel.calibration import top_label
# isort: on
from surelabel.calibration.base import _REGISTRY, BaseCalibrator
from surelabel.calibration.base import make_calibrator as make_calibrator
from surelabel.calibration.per_label import PerLabelCalibrator
from surelabel.errors import CalibrationError

#: The built-in calibrator families (modules).
FAMILIES = (temperature, dirichlet, binary, contextual, top_label)

#: Every registered calibrator class by method name (read-only; a calibrator registers
#: itself by setting ``method``).
CALIBRATORS: Mapping[str, type[BaseCalibrator]] = MappingProxyType(_REGISTRY)
#: Methods that only apply to binary (two-label) distributions.
BINARY_ONLY: tuple[str, ...] = tuple(m for m, cls in CALIBRATORS.items() if cls.binary_only)
#: Methods that wrap another one; ``auto`` does not try them as a base.
WRAPPERS: tuple[str, ...] = tuple(m for m, cls in CALIBRATORS.items() if cls.is_wrapper)

#: A fitted calibrator: one distribution's, or one per label of a multilabel task.
FittedCalibrator = BaseCalibrator | PerLabelCalibrator


def calibrator_from_dict(data: dict[str, Any]) -> FittedCalibrator:
    """Rebuild a fitted calibrator from :meth:`to_dict` data."""
    if not isinstance(data, dict) or "method" not in data:
        raise CalibrationError("calibrator: expected a mapping with a 'method'")
    if "per_label" in data:
        return PerLabelCalibrator.from_dict(data)
    method = data["method"]
    if method not in CALIBRATORS:
        raise CalibrationError(f"calibrator: unknown method {method!r}")
    return CALIBRATORS[method].from_dict(data)
