"""Contextual calibration (Zhao et al. 2021): divide out the bias seen on content-free inputs."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike

from surelabel._numeric import FloatArray, softmax
from surelabel.calibration.base import BaseCalibrator, as_logprobs

#: Content-free inputs used to estimate a model's label bias (Zhao et al. 2021).
CONTENT_FREE: tuple[str, ...] = ("N/A", "", "[MASK]")


class ContextualCalibration(BaseCalibrator):
    """Divide out the model's bias measured on content-free inputs (Zhao et al. 2021).

    ``fit`` takes the label log-probabilities the model gives to content-free inputs such as
    ``"N/A"``, ``""`` and ``"[MASK]"`` (see :data:`CONTENT_FREE`); their mean distribution
    ``p_cf`` is the bias, and a calibrated distribution is proportional to ``p / p_cf``.
    True labels are not needed (``y`` is ignored), so it needs no labelled rows at all.
    """

    method: ClassVar[str] = "contextual"
    needs_labels: ClassVar[bool] = False
    _state: ClassVar[tuple[str, ...]] = ("bias_",)

    def __init__(self) -> None:
        pass

    def fit(self, logprobs: ArrayLike, y: ArrayLike | None = None) -> ContextualCalibration:
        del y
        x = as_logprobs(logprobs)
        self.bias_ = np.log(np.mean(np.exp(x), axis=0))
        self.n_classes_ = x.shape[1]
        return self

    def _transform(self, logprobs: FloatArray) -> FloatArray:
        return softmax(logprobs - self.bias_[None, :])
