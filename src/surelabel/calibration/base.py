"""What every calibrator shares: the estimator contract, the ``calibrate`` hook, and
registration by method name.

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

import inspect
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from surelabel._numeric import FloatArray as FloatArray
from surelabel._numeric import log_softmax as log_softmax
from surelabel._numeric import safe_log
from surelabel._numeric import softmax as softmax
from surelabel.distribution import LabelDistribution
from surelabel.errors import CalibrationError, NotFittedError

#: Measured log-probabilities are raised to at least this before use: a guard against
#: -inf (a label the model gives no probability at all), not a probability floor.
LOGPROB_GUARD = -1e3

#: Every calibrator class by ``method`` name, in the order they were defined; filled by
#: :meth:`BaseCalibrator.__init_subclass__` and read through
#: :data:`surelabel.calibration.registry.CALIBRATORS`.
_REGISTRY: dict[str, type[BaseCalibrator]] = {}


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
    return log_softmax(np.maximum(arr, LOGPROB_GUARD))


def distribution_logprobs(distribution: LabelDistribution) -> FloatArray:
    """An item's label log-probabilities: measured ones if present, else log(probabilities)."""
    lps = distribution.logprobs
    if lps is not None and all(v is not None for v in lps):
        return np.array([float(v) for v in lps if v is not None], dtype=np.float64)
    return safe_log(distribution.probabilities)


class BaseCalibrator:
    """Base of single-distribution calibrators (multiclass, or binary).

    A subclass that sets a non-empty ``method`` registers itself under that name (the
    calibration files, ``make_calibrator`` and the command line find it there).
    """

    #: Name used in calibration files and on the command line.
    method: ClassVar[str] = ""
    #: Whether ``fit`` needs true labels (contextual calibration does not).
    needs_labels: ClassVar[bool] = True
    #: Whether it only applies to binary (two-label) distributions.
    binary_only: ClassVar[bool] = False
    #: Whether it wraps another calibrator (``auto`` does not try it as a base).
    is_wrapper: ClassVar[bool] = False
    #: Fitted attributes saved to and restored from calibration files.
    _state: ClassVar[tuple[str, ...]] = ()

    n_classes_: int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Only a class that names itself registers: a subclass inheriting ``method``
        # (a tweaked TemperatureScaling, say) does not take over its parent's name.
        method = cls.__dict__.get("method", "")
        if not method:
            return
        known = _REGISTRY.get(method)
        # The same class defined again (its module reloaded) replaces itself.
        if known is not None and (known.__module__, known.__qualname__) != (
            cls.__module__, cls.__qualname__
        ):
            raise TypeError(f"calibration method {method!r} is already registered by "
                            f"{known.__module__}.{known.__qualname__}")
        _REGISTRY[method] = cls

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


def calibrator_class(method: str) -> type[BaseCalibrator]:
    """The registered calibrator class called ``method`` (``KeyError`` if there is none)."""
    return _REGISTRY[method]


def make_calibrator(method: str, **params: Any) -> BaseCalibrator:
    """A new, unfitted calibrator of a registered method."""
    try:
        cls = _REGISTRY[method]
    except KeyError:
        raise CalibrationError(
            f"unknown calibration method {method!r}; expected one of {', '.join(_REGISTRY)}"
        ) from None
    return cls(**params)
