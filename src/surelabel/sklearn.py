"""A scikit-learn classifier backed by a language model: :class:`LLMClassifier`.

Inputs are texts (a list, a 1-D array, or a one-column 2-D array / DataFrame); targets are
label names, or integers (label-encoded: ``i`` is the ``i``-th label name in sorted order,
as :class:`~sklearn.preprocessing.LabelEncoder` numbers them when every label occurs).
``fit`` learns the label set and, by default, a calibration; the model itself is not
trained. It follows the estimator contract, so it works inside ``CalibratedClassifierCV``
(``method="temperature"`` too, which passes integer targets), ``cross_val_score`` and a
``Pipeline``, and it pickles (the backend is rebuilt from its spec where it is unpickled).

Requires the ``eval`` extra (scikit-learn).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator, ClassifierMixin  # type: ignore[import-untyped]
from sklearn.exceptions import (  # type: ignore[import-untyped]
    NotFittedError as SklearnNotFittedError,
)

from surelabel import errors, methods
from surelabel.backends.base import Backend
from surelabel.backends.registry import BackendSpec, build_backend
from surelabel.calibration import Calibration, fit_calibration, label_indices
from surelabel.calibration.base import softmax
from surelabel.evaluate import text_logprobs
from surelabel.task import Task

__all__ = ["LLMClassifier", "NotFittedError"]


class NotFittedError(errors.NotFittedError, SklearnNotFittedError):  # type: ignore[misc]
    """An :class:`LLMClassifier` was used before ``fit``: scikit-learn's own
    ``NotFittedError`` (what ``check_is_fitted`` raises), and surelabel's."""


def _texts(X: Any) -> list[str]:
    arr = np.asarray(X, dtype=object)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"expected a sequence of texts (or one column of them), got shape "
                         f"{arr.shape}")
    texts = []
    for i, t in enumerate(arr):
        if t is None or (isinstance(t, float) and np.isnan(t)):
            raise ValueError(f"X[{i}] is missing (None or NaN); every row needs a text")
        if not isinstance(t, str):
            raise ValueError(f"X[{i}] is a {type(t).__name__}, not a text")
        texts.append(str(t))
    return texts


def _targets(task: Task, y: ArrayLike) -> tuple[list[str], NDArray[Any]]:
    """Label names for ``y`` and the ``classes_`` they come as: names, or integers that
    index the sorted label names, or booleans for a true/false task."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        arr = arr.ravel() if arr.ndim == 2 and arr.shape[1] == 1 else arr
    if arr.ndim != 1:
        raise ValueError(f"y must be one label per text, got shape {arr.shape}")
    names = sorted(task.label_names)
    if arr.dtype == bool:
        if set(names) != {"true", "false"}:
            raise ValueError("boolean y needs a task whose labels are true and false")
        return ["true" if v else "false" for v in arr], np.array([False, True])
    if np.issubdtype(arr.dtype, np.integer):
        bad = [int(v) for v in arr if not 0 <= int(v) < len(names)]
        if bad:
            raise ValueError(
                f"y holds {bad[0]}: integer labels index the task's {len(names)} label names "
                f"in sorted order ({', '.join(names)}), so they run from 0 to {len(names) - 1}"
            )
        return [names[int(v)] for v in arr], np.arange(len(names))
    return [str(v) for v in arr.astype(object)], np.array(names, dtype=object)


class LLMClassifier(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """Classify texts with a language model; probabilities for every label.

    Parameters
    ----------
    task:
        The :class:`~surelabel.task.Task` (binary or multiclass).
    backend:
        A :class:`~surelabel.backends.registry.BackendSpec` or backend name (default
        ``"llamacpp"``, the embedded model), built on first use; or a backend instance,
        shared, not copied, when scikit-learn clones the estimator.
    method:
        Confidence method (``auto`` by default: the best the backend allows, as
        :class:`~surelabel.classifier.Classifier` does; ``exact``, ``topk``, ...).
    calibration:
        ``"auto"`` (default) or a method name to fit a calibrator in ``fit``; ``None`` to
        use the raw label distribution (e.g. inside ``CalibratedClassifierCV``).
    folds:
        Cross-validation folds used to choose the calibration method.

    Attributes
    ----------
    classes_:
        Label names, sorted (the column order of ``predict_proba``); or, when ``fit`` got
        integer (or boolean) targets, those integers ``0 .. k-1`` (booleans), standing for
        the sorted label names.
    calibration_:
        The fitted :class:`~surelabel.calibration.Calibration`, or ``None``.
    """

    def __init__(
        self,
        task: Task | None = None,
        backend: Backend | BackendSpec | str = "llamacpp",
        method: str = "auto",
        calibration: str | None = "auto",
        folds: int = 5,
    ) -> None:
        self.task = task
        self.backend = backend
        self.method = method
        self.calibration = calibration
        self.folds = folds

    # Clones share the backend (a loaded model) and the cache of scored texts.
    def __sklearn_clone__(self) -> LLMClassifier:
        new = type(self)(**self.get_params(deep=False))
        new.__dict__["_score_cache"] = self._cache()
        return new

    def __getstate__(self) -> dict[str, Any]:
        # The built backend (a loaded model) and the scored texts stay behind; the
        # backend is rebuilt from its spec where the estimator is unpickled.
        state: dict[str, Any] = super().__getstate__()
        state = dict(state)
        state.pop("_backend_instance", None)
        state.pop("_score_cache", None)
        return state

    def _cache(self) -> dict[tuple[str, str, str], NDArray[np.float64]]:
        cache = self.__dict__.get("_score_cache")
        if cache is None:
            cache = self.__dict__["_score_cache"] = {}
        return cache

    def _backend(self) -> Backend:
        if isinstance(self.backend, (str, BackendSpec)):
            shared = self.__dict__.get("_backend_instance")
            if shared is None:
                shared = self.__dict__["_backend_instance"] = build_backend(self.backend)
            return shared
        return self.backend

    def _task(self) -> Task:
        if self.task is None:
            raise ValueError("LLMClassifier needs a task (task=Task(...) or load_task(path))")
        if self.task.kind == "multilabel":
            raise ValueError("LLMClassifier supports binary and multiclass tasks")
        return self.task

    def _logprobs(self, texts: Sequence[str]) -> NDArray[np.float64]:
        """Raw label log-probabilities (n, k) in task order, cached per text."""
        task = self._task()
        backend = self._backend()
        name = methods.resolve(self.method, backend.capabilities)
        cache = self._cache()
        fingerprint = task.fingerprint()
        rows = []
        for text in texts:
            key = (fingerprint, name, text)
            if key not in cache:
                cache[key] = text_logprobs(backend, task, text, name)
            rows.append(cache[key])
        return np.stack(rows)

    def fit(self, X: Any, y: ArrayLike) -> LLMClassifier:
        """Learn the label set and (unless ``calibration=None``) a calibration."""
        task = self._task()
        texts = _texts(X)
        labels, classes = _targets(task, y)
        if len(labels) != len(texts):
            raise ValueError(f"X has {len(texts)} texts but y has {len(labels)} labels")
        y_idx = label_indices(task, labels)
        self.classes_ = classes
        self.calibration_: Calibration | None = None
        if self.calibration is not None:
            self.calibration_, _ = fit_calibration(
                task, self._backend().model_name, self._logprobs(texts), y_idx,
                method=self.calibration, folds=self.folds,
                confidence_method=methods.resolve(self.method, self._backend().capabilities),
            )
        self.n_features_in_ = 1
        return self

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "classes_")

    def _check_fitted(self) -> None:
        if not hasattr(self, "classes_"):
            raise NotFittedError("this LLMClassifier is not fitted yet; call fit() first")

    def predict_proba(self, X: Any) -> NDArray[np.float64]:
        """Label probabilities, columns in ``classes_`` order."""
        self._check_fitted()
        task = self._task()
        lp = self._logprobs(_texts(X))
        probs = (self.calibration_.calibrator.predict_proba(lp)
                 if self.calibration_ is not None else softmax(lp))
        order = [task.label_names.index(c) for c in sorted(task.label_names)]
        return np.asarray(probs[:, order], dtype=np.float64)

    def predict(self, X: Any) -> NDArray[Any]:
        """The most probable label of each text."""
        self._check_fitted()
        return np.asarray(self.classes_[self.predict_proba(X).argmax(axis=1)])

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        return tags
