"""What every calibrator shares: the estimator contract and the ``calibrate`` hook.

A calibrator maps the raw label log-probabilities of an item to calibrated probabilities.
Input to ``fit`` and ``predict_proba`` is an (n, k) array of label log-probabilities (need
not be normalized: each row is log-softmaxed first) and, for ``fit``, the index of each
row's true label. Binary calibrators (Platt, isotonic) need k = 2 and calibrate the
probability of the first label.

Estimator contract (scikit-learn): ``__init__`` stores its arguments only, ``fit`` returns
``self``, learned state ends in ``_``, and using an unfitted calibrator raises
:class:`~surelabel.errors.NotFittedError`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from surelabel.distribution import LabelDistribution
from surelabel.errors import CalibrationError, NotFittedError

FloatArray = NDArray[np.float64]
# Floor for probabilities turned back into log-probabilities (a label with probability 0).
_LOG_FLOOR = -1e3


def log_softmax(x: FloatArray) -> FloatArray:
    """Row-wise log-softmax of an (n, k) array."""
    m = np.max(x, axis=1, keepdims=True)
    z = x - m
    return np.asarray(z - np.log(np.sum(np.exp(z), axis=1, keepdims=True)), dtype=np.float64)


def softmax(x: FloatArray) -> FloatArray:
    return np.asarray(np.exp(log_softmax(x)), dtype=np.float64)


def as_logprobs(x: ArrayLike) -> FloatArray:
    """Validate an (n, k) array of label log-probabilities and normalize each row."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise ValueError(
            f"expected an (n, k >= 2) array of label log-probabilities, got {arr.shape}"
        )
    if np.isnan(arr).any():
        raise ValueError("label log-probabilities contain NaN")
    return log_softmax(np.maximum(arr, _LOG_FLOOR))


def distribution_logprobs(distribution: LabelDistribution) -> FloatArray:
    """An item's label log-probabilities: measured ones if present, else log(probabilities)."""
    lps = distribution.logprobs
    if lps is not None and all(v is not None for v in lps):
        return np.array([float(v) for v in lps if v is not None], dtype=np.float64)
    return np.array(
        [math.log(p) if p > 0 else _LOG_FLOOR for p in distribution.probabilities],
        dtype=np.float64,
    )


class BaseCalibrator:
    """Base of single-distribution calibrators (multiclass, or binary)."""

    #: Name used in calibration files and on the command line.
    method: ClassVar[str] = ""
    #: Whether ``fit`` needs true labels (contextual calibration does not).
    needs_labels: ClassVar[bool] = True
    #: Fitted attributes saved to and restored from calibration files.
    _state: ClassVar[tuple[str, ...]] = ()

    n_classes_: int

    def fit(self, logprobs: ArrayLike, y: ArrayLike | None = None) -> BaseCalibrator:
        raise NotImplementedError

    def _transform(self, logprobs: FloatArray) -> FloatArray:
        """Calibrated probabilities of normalized (n, k) log-probabilities."""
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_classes_"):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit() first"
            )

    def predict_proba(self, logprobs: ArrayLike) -> FloatArray:
        """Calibrated probabilities, an (n, k) array whose rows sum to 1."""
        self._check_fitted()
        x = as_logprobs(logprobs)
        if x.shape[1] != self.n_classes_:
            raise ValueError(f"expected {self.n_classes_} labels per row, got {x.shape[1]}")
        p = self._transform(x)
        return np.asarray(p / p.sum(axis=1, keepdims=True), dtype=np.float64)

    def calibrate(
        self, distribution: LabelDistribution, label: str | None = None
    ) -> LabelDistribution:
        """The calibrated version of one item's distribution (``label`` is ignored here)."""
        del label
        p = self.predict_proba(distribution_logprobs(distribution)[None, :])[0]
        return distribution.with_probabilities(p.tolist())

    # -- persistence --------------------------------------------------------------------

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        import inspect

        del deep
        names = [
            p for p in inspect.signature(type(self).__init__).parameters if p != "self"
        ]
        return {name: getattr(self, name) for name in names}

    def to_dict(self) -> dict[str, Any]:
        """Method, parameters and fitted state, as plain JSON data."""
        self._check_fitted()
        state = {"n_classes_": self.n_classes_}
        for name in self._state:
            value = getattr(self, name)
            state[name] = value.tolist() if isinstance(value, np.ndarray) else value
        return {"method": self.method, "params": self.get_params(), "state": state}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaseCalibrator:
        try:
            obj = cls(**data.get("params", {}))
            state = data["state"]
            obj.n_classes_ = int(state["n_classes_"])
            for name in cls._state:
                value = state[name]
                setattr(obj, name, np.asarray(value, dtype=np.float64) if isinstance(value, list)
                        else value)
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"{cls.method} calibrator: malformed state ({exc})") from exc
        return obj

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


def check_labels(y: ArrayLike | None, n: int, k: int) -> NDArray[np.intp]:
    """Validate true-label indices for ``n`` rows of ``k`` labels."""
    if y is None:
        raise ValueError("this calibrator needs the true labels (y)")
    arr = np.asarray(y)
    if arr.shape != (n,):
        raise ValueError(f"expected {n} true labels, got shape {arr.shape}")
    out = arr.astype(np.intp)
    if np.any(out != arr) or np.any(out < 0) or np.any(out >= k):
        raise ValueError(f"true labels must be label indices in 0..{k - 1}")
    return out
