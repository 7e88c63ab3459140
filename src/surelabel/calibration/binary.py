"""Calibrators of binary (two-label) distributions: functions of the log-odds.

- :class:`PlattScaling` (Platt 1999): logistic regression on the log-odds, with Platt's
  smoothed targets.
- :class:`IsotonicCalibration` (Zadrozny & Elkan 2002): a monotone step function of the
  log-odds, fitted by pool-adjacent-violators.

Both calibrate the probability of the first label.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike

from surelabel._numeric import FloatArray
from surelabel.calibration._optim import isotonic, newton
from surelabel.calibration.base import BaseCalibrator, as_logprobs, check_labels


def _binary_scores(x: FloatArray, method: str) -> FloatArray:
    if x.shape[1] != 2:
        raise ValueError(f"{method} calibration is for binary distributions (2 labels), "
                         f"got {x.shape[1]}; use temperature scaling for multiclass tasks")
    return np.asarray(x[:, 0] - x[:, 1], dtype=np.float64)


def _sigmoid(z: FloatArray) -> FloatArray:
    return np.asarray(0.5 * (1 + np.tanh(z / 2)), dtype=np.float64)


class PlattScaling(BaseCalibrator):
    """P(first label) = sigmoid(a * log-odds + b), fitted by Newton's method.

    Targets are smoothed as Platt proposed ((N+ + 1)/(N+ + 2) and 1/(N- + 2)), which keeps
    the fit finite on separable data.
    """

    method: ClassVar[str] = "platt"
    binary_only: ClassVar[bool] = True
    _state: ClassVar[tuple[str, ...]] = ("a_", "b_")

    def __init__(self, max_iter: int = 100) -> None:
        self.max_iter = max_iter

    def fit(self, logprobs: ArrayLike, y: ArrayLike | None = None) -> PlattScaling:
        x = as_logprobs(logprobs)
        s = _binary_scores(x, self.method)
        labels = check_labels(y, len(x), 2)
        pos = labels == 0
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        t = np.where(pos, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
        # Fitted on standardized scores (the same model): when the scores barely vary, as
        # for a model that says yes to everything, the raw design is nearly collinear and
        # Newton lands on a huge slope that extrapolates to certainty.
        centre = float(s.mean())
        scale = float(s.std()) or 1.0
        design = np.stack([(s - centre) / scale, np.ones_like(s)], axis=1)

        def loss(w: FloatArray) -> float:
            z = design @ w
            # Cross-entropy with soft targets, written stably: log(1 + e^z) - t z.
            return float(np.mean(np.logaddexp(0.0, z) - t * z))

        def grad_hess(w: FloatArray) -> tuple[FloatArray, FloatArray]:
            p = _sigmoid(design @ w)
            grad = design.T @ (p - t)
            hess = design.T @ (design * (p * (1 - p))[:, None]) + 1e-9 * np.eye(2)
            return grad, hess

        # From the label prior (a flat map), as Platt's own algorithm starts: a logistic fit
        # started far from its optimum can step to where its Hessian vanishes.
        prior = float(np.mean(t))
        w = newton(loss, grad_hess, np.array([0.0, np.log(prior / (1 - prior))]),
                   self.max_iter)
        self.a_ = float(w[0] / scale)
        self.b_ = float(w[1] - w[0] * centre / scale)
        self.n_classes_ = 2
        return self

    def _transform(self, logprobs: FloatArray) -> FloatArray:
        p = _sigmoid(self.a_ * _binary_scores(logprobs, self.method) + self.b_)
        return np.stack([p, 1 - p], axis=1)


class IsotonicCalibration(BaseCalibrator):
    """A non-decreasing map from the log-odds to P(first label), linear between fitted points.

    Parameters
    ----------
    eps:
        Calibrated probabilities are kept in [eps, 1 - eps]: a step function fitted on a few
        hundred items would otherwise claim certainty (and an infinite log loss).
    """

    method: ClassVar[str] = "isotonic"
    binary_only: ClassVar[bool] = True
    _state: ClassVar[tuple[str, ...]] = ("x_", "y_")

    def __init__(self, eps: float = 1e-3) -> None:
        self.eps = eps

    def fit(self, logprobs: ArrayLike, y: ArrayLike | None = None) -> IsotonicCalibration:
        x = as_logprobs(logprobs)
        s = _binary_scores(x, self.method)
        labels = check_labels(y, len(x), 2)
        self.x_, _, fitted = isotonic(s, (labels == 0).astype(np.float64))
        self.y_ = np.clip(fitted, self.eps, 1 - self.eps)
        self.n_classes_ = 2
        return self

    def _transform(self, logprobs: FloatArray) -> FloatArray:
        p = np.interp(_binary_scores(logprobs, self.method), self.x_, self.y_)
        return np.stack([p, 1 - p], axis=1)
