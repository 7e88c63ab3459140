"""Temperature scaling, with or without a learned bias per label.

- :class:`TemperatureScaling` (Guo et al. 2017): divide the label log-probabilities by one
  learned temperature. Keeps the ranking of labels, so accuracy is unchanged.
- :class:`BiasTemperatureScaling` (Alexandari, Kundaje & Shrikumar 2020): a temperature
  and a bias per label, which can undo a model's preference for some labels.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike

from surelabel._numeric import FloatArray, log_softmax, softmax
from surelabel.calibration._optim import golden_min, newton
from surelabel.calibration.base import BaseCalibrator, as_logprobs, check_labels


def _nll(logprobs: FloatArray, y: np.ndarray[Any, Any]) -> float:
    return float(-np.mean(logprobs[np.arange(len(y)), y]))


class TemperatureScaling(BaseCalibrator):
    """softmax(logprobs / T), with T fitted by minimizing the log loss.

    Parameters
    ----------
    min_temperature, max_temperature:
        Search range for T (T > 1 softens, T < 1 sharpens).
    """

    method: ClassVar[str] = "temperature"
    _state: ClassVar[tuple[str, ...]] = ("temperature_",)

    def __init__(self, min_temperature: float = 0.05, max_temperature: float = 50.0) -> None:
        self.min_temperature = min_temperature
        self.max_temperature = max_temperature

    def fit(self, logprobs: ArrayLike, y: ArrayLike | None = None) -> TemperatureScaling:
        x = as_logprobs(logprobs)
        labels = check_labels(y, len(x), x.shape[1])
        # The log loss is convex in 1/T, hence unimodal in log T.
        log_t = golden_min(
            lambda lt: _nll(log_softmax(x / np.exp(lt)), labels),
            float(np.log(self.min_temperature)),
            float(np.log(self.max_temperature)),
        )
        self.temperature_ = float(np.exp(log_t))
        self.n_classes_ = x.shape[1]
        return self

    def _transform(self, logprobs: FloatArray) -> FloatArray:
        return softmax(logprobs / self.temperature_)


class BiasTemperatureScaling(BaseCalibrator):
    """softmax(logprobs / T + b): temperature plus a learned bias per label.

    "Bias-corrected temperature scaling" (Alexandari, Kundaje & Shrikumar 2020). The bias
    terms undo a model's preference for some labels (a small model often favours the first
    label listed), learned from the labelled rows rather than from content-free inputs, so
    unlike plain temperature scaling it can change the predicted label. The log loss is
    convex in (1/T, b), so Newton's method finds the optimum; a small ridge penalty on b
    keeps it finite when a label never occurs.
    """

    method: ClassVar[str] = "bias_temperature"
    _state: ClassVar[tuple[str, ...]] = ("temperature_", "bias_")

    def __init__(self, l2: float = 1e-3, max_iter: int = 100) -> None:
        self.l2 = l2
        self.max_iter = max_iter

    def fit(self, logprobs: ArrayLike, y: ArrayLike | None = None) -> BiasTemperatureScaling:
        x = as_logprobs(logprobs)
        n, k = x.shape
        labels = check_labels(y, n, k)
        # Centred per label (the same model, z = (x - m) / T + b', with b = b' - m / T):
        # when the log-probabilities barely vary, as for a model that says yes to every
        # label of a multilabel task, the uncentred problem is nearly collinear and Newton
        # steps overshoot.
        centre = x.mean(axis=0)
        inv_t, bias = self._solve(x - centre, labels, fit_temperature=True)
        if inv_t < 0:
            # A negative 1/T would reverse the model's ranking: not a temperature. The best
            # temperature at or above 0 is then 1/T = 0, the bias alone (the label prior).
            inv_t, bias = self._solve(x - centre, labels, fit_temperature=False)
        self.temperature_ = float(1.0 / inv_t) if inv_t > 0 else float("inf")
        self.bias_ = np.asarray(bias - centre * inv_t, dtype=np.float64)
        self.n_classes_ = k
        return self

    def _solve(
        self, x: FloatArray, labels: np.ndarray[Any, Any], *, fit_temperature: bool
    ) -> tuple[float, FloatArray]:
        """(1/T, b) minimizing the penalized log loss of softmax(x / T + b)."""
        n, k = x.shape
        onehot = np.zeros_like(x)
        onehot[np.arange(n), labels] = 1.0
        # Features of label j for item i: (x_ij, e_j); parameters theta = (1/T, b_1..b_k).
        eye = np.broadcast_to(np.eye(k), (n, k, k))
        phi = np.concatenate([x[:, :, None], eye], axis=2) if fit_temperature else eye
        d = phi.shape[2]
        ridge = np.full(d, self.l2)
        if fit_temperature:
            ridge[0] = 1e-9

        def loss(theta: FloatArray) -> float:
            z = phi @ theta
            lse = np.logaddexp.reduce(z, axis=1)
            return float(np.mean(lse - z[np.arange(n), labels]) + 0.5 * ridge @ theta**2)

        def grad_hess(theta: FloatArray) -> tuple[FloatArray, FloatArray]:
            p = softmax(phi @ theta)
            grad = np.einsum("ij,ijd->d", p - onehot, phi) / n + ridge * theta
            mean_phi = np.einsum("ij,ijd->id", p, phi)
            hess = (np.einsum("ij,ijd,ije->de", p, phi, phi)
                    - np.einsum("id,ie->de", mean_phi, mean_phi)) / n + np.diag(ridge)
            return grad, hess + 1e-9 * np.eye(d)

        theta0 = np.zeros(d)
        if fit_temperature:
            theta0[0] = 1.0
        theta = newton(loss, grad_hess, theta0, self.max_iter)
        if fit_temperature:
            return float(theta[0]), np.asarray(theta[1:], dtype=np.float64)
        return 0.0, np.asarray(theta, dtype=np.float64)

    def _transform(self, logprobs: FloatArray) -> FloatArray:
        inv_t = 0.0 if np.isinf(self.temperature_) else 1.0 / self.temperature_
        return softmax(logprobs * inv_t + self.bias_[None, :])
