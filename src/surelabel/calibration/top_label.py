"""Top-label calibration (Gupta & Ramdas 2021): recalibrate the predicted label's confidence."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike

from surelabel._numeric import FloatArray, kfold, train_rows
from surelabel.calibration._optim import centred_isotonic
from surelabel.calibration.base import BaseCalibrator, as_logprobs, calibrator_class, check_labels
from surelabel.errors import CalibrationError


class TopLabelCalibration(BaseCalibrator):
    """A base calibrator followed by a recalibration of its top-label confidence.

    "Top-label calibration" (Gupta & Ramdas 2021): what a user reads, and what routing
    thresholds, is the confidence of the predicted label, so that one number is mapped to
    the observed accuracy. The base calibrator's out-of-fold confidences (``folds``-fold
    cross-fitting on the rows given to ``fit``) and whether each prediction was right are
    fitted by isotonic regression; the map is then linear between the centres of the
    isotonic steps ("centred" isotonic regression), which keeps the ranking of items
    and avoids the ties of a step function. The base is then refitted on all rows.

    At prediction time the top label's probability is replaced by the mapped confidence and
    the other labels share the rest in their old proportions. The predicted label never
    changes: a mapped confidence too low for that is raised just above the runner-up.

    Parameters
    ----------
    base:
        Name of the base calibrator (any labelled method in
        :data:`~surelabel.calibration.registry.CALIBRATORS` that wraps no other).
    folds:
        Cross-fitting folds for the base's out-of-fold confidences.
    seed:
        Seed of the fold assignment.
    eps:
        Mapped confidences are kept in [eps, 1 - eps].
    """

    method: ClassVar[str] = "top_label"
    is_wrapper: ClassVar[bool] = True
    _state: ClassVar[tuple[str, ...]] = ("x_", "y_")

    def __init__(
        self, base: str = "temperature", folds: int = 5, seed: int = 0, eps: float = 1e-3
    ) -> None:
        self.base = base
        self.folds = folds
        self.seed = seed
        self.eps = eps

    def _make_base(self) -> BaseCalibrator:
        try:
            cls = calibrator_class(self.base)
        except KeyError:
            cls = None
        if cls is None or not cls.needs_labels or cls.is_wrapper:
            raise CalibrationError(
                f"top_label: base must be a calibrator fitted on labels, got {self.base!r}"
            )
        return cls()

    def fit(self, logprobs: ArrayLike, y: ArrayLike | None = None) -> TopLabelCalibration:
        x = as_logprobs(logprobs)
        n, k = x.shape
        labels = check_labels(y, n, k)
        oof = np.zeros_like(x)
        for test in kfold(n, max(2, min(self.folds, n)), self.seed):
            train = train_rows(n, test)
            oof[test] = self._make_base().fit(x[train], labels[train]).predict_proba(x[test])
        self.x_, self.y_ = centred_isotonic(
            oof.max(axis=1), (oof.argmax(axis=1) == labels).astype(np.float64), self.eps
        )
        self.base_ = self._make_base().fit(x, labels)
        self.n_classes_ = k
        return self

    def _transform(self, logprobs: FloatArray) -> FloatArray:
        p = self.base_.predict_proba(logprobs)
        rows = np.arange(len(p))
        top = p.argmax(axis=1)
        p1 = p[rows, top]
        p2 = np.sort(p, axis=1)[:, -2]
        # The lowest top confidence that keeps the top label on top after rescaling.
        floor = p2 / np.maximum(1 - p1 + p2, 1e-12)
        conf = np.maximum(np.interp(p1, self.x_, self.y_), np.minimum(floor + 1e-9, 1.0))
        out = p * ((1 - conf) / np.maximum(1 - p1, 1e-12))[:, None]
        out[rows, top] = conf
        return np.asarray(out, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["state"]["base_"] = self.base_.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TopLabelCalibration:
        obj = super().from_dict(data)
        assert isinstance(obj, TopLabelCalibration)
        try:
            base = data["state"]["base_"]
            obj.base_ = calibrator_class(base["method"]).from_dict(base)
        except (KeyError, TypeError) as exc:
            raise CalibrationError(f"top_label calibrator: malformed state ({exc})") from exc
        return obj
