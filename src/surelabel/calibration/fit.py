"""Fit a calibration from labelled scores: pick the method, fit it, set routing from it.

The method is chosen (``method="auto"``) by K-fold cross-validated log loss. The same
out-of-fold calibrated probabilities are then used for the accept threshold and the
conformal quantile, so neither is set on probabilities fitted to the very same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from surelabel._numeric import FloatArray, kfold, softmax, train_rows
from surelabel.calibration import uncertainty
from surelabel.calibration.base import LOGPROB_GUARD
from surelabel.calibration.file import Calibration, prompt_hash
from surelabel.calibration.per_label import PerLabelCalibrator
from surelabel.calibration.registry import (
    BINARY_ONLY,
    CALIBRATORS,
    WRAPPERS,
    FittedCalibrator,
    make_calibrator,
)
from surelabel.calibration.top_label import TopLabelCalibration
from surelabel.errors import CalibrationError
from surelabel.methods import DEFAULT_OPTIONS
from surelabel.metrics import log_loss
from surelabel.prompt import DEFAULT_PROMPT_STYLE
from surelabel.routing import conformal_quantile, fit_accept_threshold
from surelabel.subtasks import (
    answer_view,
    from_task_probabilities,
    label_indices,
    row_view,
    subtask_array,
    subtask_targets,
    task_probabilities,
)
from surelabel.task import Task

__all__ = [
    "DIRICHLET_AUTO_MAX_LABELS",
    "MIN_ROWS",
    "TOP_LABEL_MIN_ROWS",
    "calibration_view",
    "candidates",
    "cross_val_probabilities",
    "fit_calibration",
    "label_indices",
    "top_label_view",
]

MIN_ROWS = 10
#: Fewest rows for the top-label step: an isotonic map fitted on fewer is mostly noise.
TOP_LABEL_MIN_ROWS = 100


#: ``auto`` tries ``dirichlet`` up to this many labels: it learns k (k + 1) weights, and
#: its fit time grows fast with k (``bench/bench_calibrators.py``, 1000 rows: 0.09 s at 7
#: labels, 0.48 s at 15, 3.5 s at 25; ``auto`` fits it 6 times for cross-validation).
DIRICHLET_AUTO_MAX_LABELS = 20


def candidates(kind: str, has_content_free: bool, n_labels: int = 2) -> list[str]:
    """Methods that apply to a task kind (``auto`` chooses among these)."""
    names = [m for m in CALIBRATORS if m not in WRAPPERS
             and (kind != "multiclass" or m not in BINARY_ONLY)]
    if not has_content_free:
        names.remove("contextual")
    if kind == "multiclass" and n_labels > DIRICHLET_AUTO_MAX_LABELS:
        names.remove("dirichlet")
    return names


def _new(method: str, task: Task) -> FittedCalibrator:
    if task.kind == "multilabel":
        return PerLabelCalibrator(method, task.label_names)
    return make_calibrator(method)


def _loss(task: Task, y: NDArray[Any], probs: FloatArray) -> float:
    """Mean log loss over the subtasks (one for a single-label task, one per label)."""
    p3 = from_task_probabilities(task, probs)
    y2 = subtask_targets(task, y)
    return float(np.mean([log_loss(y2[:, j], p3[:, j, :]) for j in range(y2.shape[1])]))


def cross_val_probabilities(
    task: Task,
    method: str,
    x: FloatArray,
    y: NDArray[Any],
    content_free: FloatArray | None,
    folds: int,
    seed: int,
) -> FloatArray:
    """Out-of-fold calibrated probabilities ((n, k), or (n, L) P(label applies))."""
    if method == "contextual":
        assert content_free is not None
        return np.asarray(_new(method, task).fit(content_free).predict_proba(x), dtype=np.float64)
    out: FloatArray | None = None
    for test in kfold(len(x), folds, seed):
        train = train_rows(len(x), test)
        pred = _new(method, task).fit(x[train], y[train]).predict_proba(x[test])
        if out is None:
            out = np.zeros((len(x), *pred.shape[1:]))
        out[test] = pred
    assert out is not None
    return out


@dataclass(frozen=True)
class Selection:
    method: str
    cv_log_loss: dict[str, float]
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "cv_log_loss": self.cv_log_loss, "reason": self.reason}


def fit_calibration(
    task: Task,
    model: str,
    logprobs: ArrayLike,
    y: ArrayLike,
    *,
    method: str = "auto",
    content_free: ArrayLike | None = None,
    folds: int = 5,
    target_error: float | None = None,
    delta: float = 0.1,
    alpha: float | None = None,
    seed: int = 0,
    confidence_method: str = "exact",
    scoring: dict[str, Any] | None = None,
    assess_uncertainty: bool = False,
    guarantee_width: float = 0.05,
) -> tuple[Calibration, FloatArray]:
    """Choose and fit a calibrator on labelled rows; optionally set routing from it.

    Parameters
    ----------
    logprobs:
        Raw label log-probabilities: (n, k) for binary/multiclass tasks, (n, L, 2) (each
        label's true/false) for multilabel tasks.
    y:
        True label indices (n,), or for multilabel an (n, L) 0/1 array.
    method:
        ``auto`` (lowest cross-validated log loss), ``top_label`` (what ``auto`` picks,
        then :class:`~surelabel.calibration.TopLabelCalibration` of its top-label
        confidence; single-label tasks, at least ``TOP_LABEL_MIN_ROWS`` rows), or a name.
    content_free:
        The same kind of array for content-free inputs; enables ``contextual``.
    target_error, delta:
        Fit a guaranteed accept threshold (see :func:`surelabel.routing.fit_accept_threshold`).
    alpha:
        Fit a split-conformal quantile for prediction sets of coverage 1 - alpha.
    confidence_method:
        The method that produced ``logprobs`` (recorded; ``classify`` checks it).
    scoring:
        How they were scored (:meth:`surelabel.methods.MethodOptions.scoring_key`; recorded
        and checked likewise). Default: the default options.
    assess_uncertainty, guarantee_width:
        Also measure what the few rows leave open (:func:`surelabel.calibration.uncertainty.
        assess`: intervals of the held-out ECE and of the accept threshold, rows needed to
        bring the threshold's guarantee within ``guarantee_width``); saved in the file.

    Returns
    -------
    The calibration, and the out-of-fold calibrated probabilities of the chosen method.
    """
    x = np.asarray(logprobs, dtype=np.float64)
    yy = np.asarray(y)
    cf = None if content_free is None else np.asarray(content_free, dtype=np.float64)
    n = len(x)
    allowed = candidates(task.kind, cf is not None, len(task.label_names))
    if method in WRAPPERS and task.kind == "multilabel":
        raise CalibrationError(f"calibration method {method!r} is for single-label tasks "
                               "(multilabel labels are calibrated one yes/no at a time)")
    if method in ("auto", *WRAPPERS):
        tried = allowed
    elif method == "dirichlet" and task.kind == "multiclass":
        tried = [method]  # asked for by name: any number of labels, however slow
    elif method not in CALIBRATORS:
        raise CalibrationError(
            f"unknown calibration method {method!r}; expected auto or one of "
            f"{', '.join(CALIBRATORS)}"
        )
    elif method not in allowed:
        why = ("needs content-free inputs" if method == "contextual"
               else "is for binary and multilabel tasks; use temperature for multiclass")
        raise CalibrationError(f"calibration method {method!r} {why}")
    else:
        tried = [method]
    if n < MIN_ROWS and tried != ["contextual"]:
        raise CalibrationError(
            f"calibration needs at least {MIN_ROWS} labelled rows, got {n}"
        )
    k = max(2, min(folds, n))
    losses: dict[str, float] = {}
    oof: dict[str, FloatArray] = {}
    for name in tried:
        oof[name] = cross_val_probabilities(task, name, x, yy, cf, k, seed)
        losses[name] = _loss(task, yy, oof[name])
    raw = softmax(np.maximum(subtask_array(task, x), LOGPROB_GUARD), axis=2)
    raw_loss = _loss(task, yy, task_probabilities(task, raw)) if n else float("nan")
    chosen = min(losses, key=lambda m: losses[m])
    others = ", ".join(f"{m} {v:.4f}" for m, v in sorted(losses.items(), key=lambda kv: kv[1]))
    if method != chosen:
        reason = (f"{method} picked {chosen}: lowest {k}-fold cross-validated log loss "
                  f"({others}; uncalibrated {raw_loss:.4f})")
    else:
        reason = (f"{chosen} as asked: {k}-fold cross-validated log loss {losses[chosen]:.4f} "
                  f"(uncalibrated {raw_loss:.4f})")
    probs = oof[chosen]
    # top_label: the base auto picks, then a recalibration of its top-label confidence.
    top_label = (method == "top_label" and task.kind != "multilabel"
                 and chosen != "contextual" and n >= TOP_LABEL_MIN_ROWS)
    if chosen == "contextual":
        assert cf is not None
        calibrator: FittedCalibrator = _new(chosen, task).fit(cf)
    elif top_label:
        calibrator = TopLabelCalibration(base=chosen, seed=seed).fit(x, yy)
        probs = np.zeros_like(probs)
        for test in kfold(n, k, seed):
            train = train_rows(n, test)
            fold = TopLabelCalibration(base=chosen, seed=seed).fit(x[train], yy[train])
            probs[test] = fold.predict_proba(x[test])
        reason += ("; then its top-label confidence is recalibrated (top_label: centred "
                   "isotonic regression on cross-fitted confidences)")
    elif method == "top_label":
        reason += ("; top-label step skipped: " + ("the base needs no labels" if
                   chosen == "contextual" else f"fewer than {TOP_LABEL_MIN_ROWS} rows"))
        calibrator = _new(chosen, task).fit(x, yy)
    else:
        calibrator = _new(chosen, task).fit(x, yy)
    selection = Selection(chosen, {**losses, "none": raw_loss}, reason)
    routing = None
    if target_error is not None:
        conf, correct = top_label_view(task, probs, yy)
        routing = fit_accept_threshold(conf, correct, target_error, delta)
    conformal = None
    if alpha is not None and len(task.subtasks) == 1:  # prediction sets of labels
        q = conformal_quantile(probs[np.arange(n), yy.astype(int)], alpha)
        conformal = {"alpha": alpha, "quantile": q, "n_calibration": n}
    scoring = dict(scoring) if scoring is not None else DEFAULT_OPTIONS.scoring_key(
        confidence_method, task)
    assessed = None
    if assess_uncertainty:
        assessed = uncertainty.assess(
            *calibration_view(task, probs, yy), *top_label_view(task, probs, yy),
            routing=routing, width=guarantee_width, n_bootstrap=100, seed=seed)
    calibration = Calibration(
        calibrator=calibrator,
        task_name=task.name,
        task_fingerprint=task.fingerprint(),
        model=model,
        prompt_hash=prompt_hash(task, str(scoring.get("prompt", DEFAULT_PROMPT_STYLE))),
        kind=task.kind,
        labels=task.label_names,
        n_fitted=n,
        confidence_method=confidence_method,
        scoring=scoring,
        uncertainty=assessed,
        selection=selection.as_dict(),
        routing=routing,
        conformal=conformal,
    )
    return calibration, probs


def top_label_view(
    task: Task, probs: FloatArray, y: NDArray[Any]
) -> tuple[FloatArray, NDArray[np.bool_]]:
    """Confidence and correctness per row, as the classifier decides (task-shaped inputs;
    :func:`surelabel.subtasks.row_view`).

    Multilabel rows take their least certain label's confidence and are right only when
    every label is.
    """
    return row_view(from_task_probabilities(task, probs), subtask_targets(task, y))


def calibration_view(
    task: Task, probs: FloatArray, y: NDArray[Any]
) -> tuple[FloatArray, NDArray[np.bool_]]:
    """Confidence and correctness of the answers whose calibration is measured (task-shaped
    inputs; :func:`surelabel.subtasks.answer_view`).

    Single-label tasks: one answer per row (as :func:`top_label_view`). Multilabel tasks:
    one answer per (row, label) pair, each label's yes/no, since that is what a per-label
    calibrator calibrates; a row's least-certain confidence is not a probability that the
    whole row is right.
    """
    return answer_view(from_task_probabilities(task, probs), subtask_targets(task, y))
