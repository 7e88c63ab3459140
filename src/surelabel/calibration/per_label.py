"""Multilabel calibration: one binary calibrator per label (L yes/no sub-tasks)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from surelabel._numeric import FloatArray
from surelabel.calibration.base import (
    BaseCalibrator,
    calibrator_class,
    distribution_logprobs,
    make_calibrator,
)
from surelabel.distribution import LabelDistribution
from surelabel.errors import CalibrationError, NotFittedError


class PerLabelCalibrator:
    """One binary calibrator per label of a multilabel task.

    ``fit`` takes an (n, L, 2) array of each label's (true, false) log-probabilities and an
    (n, L) array of 0/1 (1 = the label applies). For contextual calibration pass the
    content-free inputs' (m, L, 2) log-probabilities and ``y=None``.
    """

    def __init__(self, method: str, labels: tuple[str, ...] | list[str]) -> None:
        self.method = method
        self.labels = labels

    def fit(self, logprobs: ArrayLike, y: ArrayLike | None = None) -> PerLabelCalibrator:
        x = np.asarray(logprobs, dtype=np.float64)
        if x.ndim != 3 or x.shape[1] != len(self.labels) or x.shape[2] != 2:
            raise ValueError(f"expected an (n, {len(self.labels)}, 2) array, got {x.shape}")
        yy = None if y is None else np.asarray(y)
        fitted: dict[str, BaseCalibrator] = {}
        for j, name in enumerate(self.labels):
            # Index 0 of each (true, false) pair is "true".
            target = None if yy is None else np.where(yy[:, j].astype(bool), 0, 1)
            fitted[name] = make_calibrator(self.method).fit(x[:, j, :], target)
        self.calibrators_ = fitted
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "calibrators_"):
            raise NotFittedError("this PerLabelCalibrator is not fitted yet; call fit() first")

    def predict_proba(self, logprobs: ArrayLike) -> FloatArray:
        """(n, L) probability that each label applies."""
        self._check_fitted()
        x = np.asarray(logprobs, dtype=np.float64)
        cols = [self.calibrators_[name].predict_proba(x[:, j, :])[:, 0]
                for j, name in enumerate(self.labels)]
        return np.stack(cols, axis=1)

    def calibrate(
        self, distribution: LabelDistribution, label: str | None = None
    ) -> LabelDistribution:
        self._check_fitted()
        if label is None or label not in self.calibrators_:
            raise CalibrationError(
                f"multilabel calibration needs one of the task's labels, got {label!r}"
            )
        row = distribution_logprobs(distribution)[None, :]
        p = self.calibrators_[label].predict_proba(row)[0]
        return distribution.with_probabilities(p.tolist())

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        del deep
        return {"method": self.method, "labels": list(self.labels)}

    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "method": self.method,
            "per_label": {name: c.to_dict() for name, c in self.calibrators_.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PerLabelCalibrator:
        try:
            per = data["per_label"]
            obj = cls(data["method"], tuple(per))
            obj.calibrators_ = {
                name: calibrator_class(item["method"]).from_dict(item)
                for name, item in per.items()
            }
        except (KeyError, TypeError) as exc:
            raise CalibrationError(f"per-label calibrator: malformed state ({exc})") from exc
        return obj
