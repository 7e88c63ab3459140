"""Metrics for label predictions and their confidences.

Plain numpy, no scikit-learn needed at run time; the values equal scikit-learn's
(``brier_score_loss``, ``log_loss``, ``roc_auc_score``) on the same inputs, which the tests
check. Names say the direction: ``*_score`` is higher-better, ``*_loss`` / ``*_error``
lower-better.

Most functions take the top-label view of a classifier: ``confidence`` (probability of the
predicted label) and ``correct`` (whether that label was right).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

Strategy = Literal["uniform", "quantile"]
FloatArray = NDArray[np.float64]

__all__ = [
    "ReliabilityCurve",
    "accuracy_score",
    "aurc_score",
    "bootstrap_ci",
    "brier_score_loss",
    "calibration_error",
    "confidence_auroc_score",
    "debiased_calibration_error",
    "log_loss",
    "macro_f1_score",
    "max_calibration_error",
    "precision_recall_per_class",
    "reliability_curve",
    "risk_coverage_curve",
    "roc_auc_score",
    "smooth_calibration_error",
]


def _floats(x: ArrayLike) -> FloatArray:
    return np.asarray(x, dtype=np.float64)


def accuracy_score(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> float:
    """Share of predictions equal to the true label."""
    if len(y_true) != len(y_pred):
        raise ValueError("y_true and y_pred differ in length")
    if not len(y_true):
        return float("nan")
    return float(np.mean([a == b for a, b in zip(y_true, y_pred, strict=True)]))


def precision_recall_per_class(
    y_true: Sequence[Hashable],
    y_pred: Sequence[Hashable],
    labels: Sequence[Hashable] | None = None,
) -> dict[Hashable, dict[str, float]]:
    """Precision, recall, F1 and support of each class (0 where undefined, as scikit-learn)."""
    if labels is None:
        labels = sorted(set(y_true) | set(y_pred), key=str)
    out: dict[Hashable, dict[str, float]] = {}
    for label in labels:
        tp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == label and p == label)
        fp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t != label and p == label)
        fn = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == label and p != label)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        out[label] = {"precision": precision, "recall": recall, "f1": f1, "support": tp + fn}
    return out


def macro_f1_score(
    y_true: Sequence[Hashable],
    y_pred: Sequence[Hashable],
    labels: Sequence[Hashable] | None = None,
) -> float:
    """Unweighted mean of per-class F1 (equals ``f1_score(average='macro')``)."""
    per = precision_recall_per_class(y_true, y_pred, labels)
    return float(np.mean([v["f1"] for v in per.values()])) if per else float("nan")


def brier_score_loss(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """Brier score.

    Binary: ``y_true`` in {0, 1} and ``y_prob`` the probability of class 1, giving
    mean((p - y)^2). Multiclass: ``y_true`` class indices and ``y_prob`` an (n, k) matrix,
    giving mean(sum_k (p_k - 1[y = k])^2), halved for k = 2 so both forms agree (as
    scikit-learn's ``scale_by_half='auto'``).
    """
    p = _floats(y_prob)
    y = np.asarray(y_true)
    if p.ndim == 1:
        return float(np.mean((p - y.astype(np.float64)) ** 2))
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y.astype(int)] = 1.0
    score = float(np.mean(np.sum((p - onehot) ** 2, axis=1)))
    return score / 2 if p.shape[1] == 2 else score


def log_loss(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """Mean negative log-likelihood (nats) of the true class.

    Binary: ``y_prob`` is the probability of class 1. Multiclass: an (n, k) matrix and class
    indices. Probabilities are clipped to [eps, 1 - eps] with float64 eps, as scikit-learn.
    """
    p = _floats(y_prob)
    y = np.asarray(y_true).astype(int)
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    eps = np.finfo(np.float64).eps
    p = np.clip(p, eps, 1 - eps)
    p = p / p.sum(axis=1, keepdims=True)
    return float(-np.mean(np.log(p[np.arange(len(y)), y])))


def roc_auc_score(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Area under the ROC curve for binary labels (ties count one half).

    Returns nan when only one class is present (scikit-learn raises instead).
    """
    y = np.asarray(y_true).astype(bool)
    s = _floats(y_score)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties (Mann-Whitney U)
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def confidence_auroc_score(confidence: ArrayLike, correct: ArrayLike) -> float:
    """How well confidence separates right from wrong answers (0.5 = not at all)."""
    return roc_auc_score(np.asarray(correct).astype(bool), confidence)


@dataclass(frozen=True)
class ReliabilityCurve:
    """Binned confidence vs accuracy, as data (draw it with ``report.ReliabilityDisplay``).

    Empty bins are dropped. ``edges`` are the bins' lower and upper confidence bounds.
    """

    confidence: tuple[float, ...]
    accuracy: tuple[float, ...]
    count: tuple[int, ...]
    edges: tuple[tuple[float, float], ...]
    strategy: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "confidence": list(self.confidence),
            "accuracy": list(self.accuracy),
            "count": list(self.count),
            "edges": [list(e) for e in self.edges],
            "strategy": self.strategy,
        }


def _bins(conf: FloatArray, n_bins: int, strategy: Strategy) -> list[NDArray[np.intp]]:
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    if strategy == "quantile":
        # Equal mass: sort and cut into n_bins chunks of (nearly) equal size.
        order = np.argsort(conf, kind="mergesort")
        return [chunk for chunk in np.array_split(order, n_bins) if len(chunk)]
    if strategy != "uniform":
        raise ValueError(f"unknown strategy {strategy!r}; expected uniform or quantile")
    # Equal width on [0, 1]; the right edge of the last bin is closed.
    index = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    return [np.flatnonzero(index == b) for b in range(n_bins) if np.any(index == b)]


def reliability_curve(
    confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15, strategy: Strategy = "uniform"
) -> ReliabilityCurve:
    """Mean confidence and accuracy per bin (equal-width ``uniform`` or equal-mass ``quantile``)."""
    conf = _floats(confidence)
    ok = _floats(correct)
    if len(conf) != len(ok):
        raise ValueError("confidence and correct differ in length")
    groups = _bins(conf, n_bins, strategy)
    return ReliabilityCurve(
        confidence=tuple(float(conf[g].mean()) for g in groups),
        accuracy=tuple(float(ok[g].mean()) for g in groups),
        count=tuple(len(g) for g in groups),
        edges=tuple((float(conf[g].min()), float(conf[g].max())) for g in groups),
        strategy=strategy,
    )


def calibration_error(
    confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15, strategy: Strategy = "uniform"
) -> float:
    """Expected calibration error (ECE): count-weighted mean |accuracy - confidence| over bins."""
    curve = reliability_curve(confidence, correct, n_bins, strategy)
    n = sum(curve.count)
    if not n:
        return float("nan")
    rows = zip(curve.count, curve.accuracy, curve.confidence, strict=True)
    return float(sum(c * abs(a - p) for c, a, p in rows) / n)


def max_calibration_error(
    confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15, strategy: Strategy = "uniform"
) -> float:
    """Maximum calibration error (MCE): the largest |accuracy - confidence| of any bin."""
    curve = reliability_curve(confidence, correct, n_bins, strategy)
    gaps = [abs(a - p) for a, p in zip(curve.accuracy, curve.confidence, strict=True)]
    return float(max(gaps)) if gaps else float("nan")


def debiased_calibration_error(
    confidence: ArrayLike, correct: ArrayLike, n_bins: int = 10, strategy: Strategy = "quantile"
) -> float:
    """Debiased l2 calibration error (Kumar, Liang & Ma 2019, "Verified uncertainty calibration").

    The binned ECE is biased upwards: even a perfectly calibrated model shows a gap of about
    sqrt(acc(1-acc)/n_b) per bin from sampling noise alone. This estimator subtracts that
    noise from each bin's squared gap, (acc - conf)^2 - acc(1 - acc)/(n_b - 1), and returns the
    square root of the count-weighted sum (clipped at 0). The l2 error is >= the l1 ECE for
    the same bins, so it is a conservative stand-in on the same scale.
    """
    conf = _floats(confidence)
    ok = _floats(correct)
    total = 0.0
    n = len(conf)
    if not n:
        return float("nan")
    for g in _bins(conf, n_bins, strategy):
        acc, mean_conf, nb = ok[g].mean(), conf[g].mean(), len(g)
        noise = acc * (1 - acc) / (nb - 1) if nb > 1 else 0.0
        total += nb / n * ((acc - mean_conf) ** 2 - noise)
    return float(np.sqrt(max(total, 0.0)))


def calibration_error_noise_floor(
    confidence: ArrayLike,
    n_bins: int = 10,
    strategy: Strategy = "quantile",
    n_draws: int = 500,
    seed: int = 0,
) -> tuple[float, float]:
    """The binned ECE that sampling noise alone gives these confidences: (mean, 95th pct).

    Outcomes are drawn as if every confidence were exactly right (item i correct with
    probability ``confidence[i]``) and the ECE of each draw is computed with the same bins.
    A measured ECE near the mean is what a perfectly calibrated model would show on this
    many items; one above the 95th percentile is miscalibration the noise does not explain.
    """
    conf = np.clip(_floats(confidence), 0.0, 1.0)
    if not len(conf):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draws = [calibration_error(conf, rng.random(len(conf)) < conf, n_bins, strategy)
             for _ in range(n_draws)]
    return float(np.mean(draws)), float(np.quantile(draws, 0.95))


def smooth_calibration_error(
    confidence: ArrayLike, correct: ArrayLike, grid_size: int = 1001
) -> float:
    """Smooth ECE (Blasiok & Nakkiran 2023, "Smooth ECE: principled reliability diagrams").

    The residuals ``correct - confidence`` are smoothed with a Gaussian kernel reflected at
    0 and 1, and the error is the integral of the absolute smoothed residual. The bandwidth
    is not a free choice: it is the fixed point sigma = smECE_sigma, found by bisection. Unlike
    the binned ECE it does not depend on a bin count and is consistent; like any estimate it
    still carries sampling noise of order 1/sqrt(n).
    """
    conf = np.clip(_floats(confidence), 0.0, 1.0)
    resid = _floats(correct) - conf
    n = len(conf)
    if not n:
        return float("nan")
    t = np.linspace(0.0, 1.0, grid_size)
    dt = t[1] - t[0]

    def at(sigma: float) -> float:
        def phi(d: FloatArray) -> FloatArray:
            return np.asarray(np.exp(-0.5 * (d / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi)),
                              dtype=np.float64)

        diff = t[:, None] - conf[None, :]
        kernel = phi(diff) + phi(t[:, None] + conf[None, :]) + phi(t[:, None] - 2 + conf[None, :])
        smoothed = kernel @ resid / n
        return float(np.sum(np.abs(smoothed)) * dt)

    lo, hi = 1e-4, 1.0
    if at(hi) >= hi:
        return at(hi)
    for _ in range(30):  # smECE_sigma - sigma decreases in sigma
        mid = (lo + hi) / 2
        if at(mid) > mid:
            lo = mid
        else:
            hi = mid
    return at((lo + hi) / 2)


def risk_coverage_curve(
    confidence: ArrayLike, correct: ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Error rate among the most confident items, for every coverage.

    Returns ``(coverage, risk, thresholds)``: accepting the items with confidence >=
    ``thresholds[i]`` covers ``coverage[i]`` of them with error rate ``risk[i]``. Tied
    confidences enter together.
    """
    conf = _floats(confidence)
    wrong = 1.0 - _floats(correct)
    n = len(conf)
    if not n:
        empty = np.array([], dtype=np.float64)
        return empty, empty, empty
    order = np.argsort(-conf, kind="mergesort")
    conf_sorted = conf[order]
    cum_wrong = np.cumsum(wrong[order])
    # Keep the last position of each run of tied confidences.
    last = np.append(conf_sorted[1:] != conf_sorted[:-1], True)
    counts = np.arange(1, n + 1, dtype=np.float64)[last]
    return counts / n, cum_wrong[last] / counts, conf_sorted[last]


def aurc_score(confidence: ArrayLike, correct: ArrayLike) -> float:
    """Area under the risk-coverage curve (lower is better, despite the ``_score`` name of
    the literature): mean error rate over the coverages 1/n, 2/n, ..., 1.

    Tied confidences are accepted together, so each tied item gets the risk of its group.
    """
    conf = _floats(confidence)
    if not len(conf):
        return float("nan")
    coverage, risk, _ = risk_coverage_curve(conf, correct)
    counts = np.round(coverage * len(conf)).astype(int)
    group_sizes = np.diff(np.concatenate([[0], counts]))
    return float(np.sum(risk * group_sizes) / len(conf))


def bootstrap_ci(
    statistic: Callable[..., float],
    *arrays: ArrayLike,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*arrays)`` resampling rows jointly."""
    data = [np.asarray(a) for a in arrays]
    n = len(data[0])
    if any(len(a) != n for a in data):
        raise ValueError("arrays differ in length")
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        idx = rng.integers(0, n, n)
        value = statistic(*(a[idx] for a in data))
        if not np.isnan(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)
