"""Routing with a guarantee: an accept threshold with a bounded error rate, and conformal sets.

:func:`fit_accept_threshold` picks the lowest confidence threshold such that, with
probability at least ``1 - delta`` over the calibration sample, the error rate among the
accepted items is at most ``target_error``. Each candidate threshold is a hypothesis
"error among accepted > target", tested with the exact binomial (Clopper-Pearson) bound;
the candidates are scanned from high confidence to low and the scan stops at the first one
that cannot be rejected (fixed-sequence testing, as in Learn-then-Test, Angelopoulos et al.
2021), which controls the chance of any false acceptance at ``delta`` without a
multiple-testing correction.

The candidates form a fixed grid (0.999, 0.998, ..., 0). The scan starts at the first grid
point that accepts enough calibration items to certify the target even if their error rate
were half the target (:func:`start_size`): starting where only a handful of items are
accepted would end the scan at once, since a few items can never show a small error rate.
The start depends only on how many items are accepted, never on which answers were right.

:func:`conformal_quantile` / :func:`label_set` give split-conformal prediction sets
(Vovk et al. 2005; Angelopoulos & Bates 2021): with the score 1 - p(true label), the set
of labels whose probability is >= 1 - q contains the true label with probability at least
1 - alpha for exchangeable data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

GRID_STEP = 0.001


def _log_binom_cdf(k: int, n: int, p: float) -> float:
    """log P(Binomial(n, p) <= k)."""
    if k >= n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return -math.inf
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p
        + (n - i) * log_q
        for i in range(k + 1)
    ]
    m = max(terms)
    return m + math.log(sum(math.exp(t - m) for t in terms))


def binomial_pvalue(errors: int, n: int, target_error: float) -> float:
    """p-value of "error rate > target" for ``errors`` of ``n``: P(Bin(n, target) <= errors)."""
    if n == 0:
        return 1.0
    return math.exp(_log_binom_cdf(errors, n, target_error))


def start_size(target_error: float, delta: float, limit: int = 100_000) -> int:
    """Smallest n at which an error rate of half the target would pass the test."""
    n = max(1, math.ceil(math.log(delta) / math.log(1 - target_error)))
    while n < limit and binomial_pvalue(math.floor(n * target_error / 2), n, target_error) > delta:
        n += max(1, n // 50)
    return n


def clopper_pearson_upper(errors: int, n: int, delta: float) -> float:
    """One-sided (1 - delta) Clopper-Pearson upper bound on a binomial proportion."""
    if n == 0:
        return 1.0
    if errors >= n:
        return 1.0
    lo, hi = errors / n, 1.0
    for _ in range(100):  # P(Bin(n, p) <= errors) decreases in p; solve it = delta
        mid = (lo + hi) / 2
        if _log_binom_cdf(errors, n, mid) > math.log(delta):
            lo = mid
        else:
            hi = mid
    return hi


@dataclass(frozen=True)
class RoutingResult:
    """The chosen accept threshold and what it promises.

    ``threshold`` is ``None`` when no threshold meets the target; then nothing is accepted
    (:attr:`accept_threshold` is 1.0, and ``confidence > 1.0`` never holds).
    """

    target_error: float
    delta: float
    threshold: float | None
    n_calibration: int
    n_accepted: int
    errors: int
    error_upper_bound: float | None
    accept_share: float
    message: str

    @property
    def accept_threshold(self) -> float:
        return 1.0 if self.threshold is None else self.threshold

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoutingResult:
        return cls(**data)


def fit_accept_threshold(
    confidence: ArrayLike,
    correct: ArrayLike,
    target_error: float,
    delta: float = 0.1,
) -> RoutingResult:
    """The lowest threshold (accept when confidence > threshold) with a guaranteed error rate.

    Parameters
    ----------
    confidence:
        Calibrated confidence of each calibration item (held out from any fitting if you can).
    correct:
        Whether each item's label was right.
    target_error:
        Largest acceptable error rate among accepted items.
    delta:
        Allowed chance that the guarantee fails (over the draw of the calibration items).
    """
    if not 0 < target_error < 1:
        raise ValueError("target_error must be between 0 and 1")
    if not 0 < delta < 1:
        raise ValueError("delta must be between 0 and 1")
    conf = np.asarray(confidence, dtype=np.float64)
    wrong = ~np.asarray(correct).astype(bool)
    n = len(conf)
    min_n = start_size(target_error, delta)
    best: tuple[float, int, int] | None = None
    started = False
    steps = round(1 / GRID_STEP)
    for j in range(steps - 1, -1, -1):
        lam = j * GRID_STEP
        accepted = conf > lam
        n_acc = int(accepted.sum())
        if not started:
            if n_acc < min_n:
                continue
            started = True
        errors = int(wrong[accepted].sum())
        if binomial_pvalue(errors, n_acc, target_error) > delta:
            break
        best = (lam, n_acc, errors)
    if best is None:
        why = (
            f"fewer than {min_n} calibration items, too few to certify any threshold"
            if n < min_n
            else "even the most confident items are wrong too often"
        )
        return RoutingResult(
            target_error=target_error, delta=delta, threshold=None, n_calibration=n,
            n_accepted=0, errors=0, error_upper_bound=None, accept_share=0.0,
            message=(f"no threshold keeps the error among accepted items <= {target_error:g} "
                     f"with probability {1 - delta:g} ({why}); nothing will be auto-accepted"),
        )
    lam, n_acc, errors = best
    upper = clopper_pearson_upper(errors, n_acc, delta)
    share = n_acc / n
    return RoutingResult(
        target_error=target_error, delta=delta, threshold=round(lam, 6), n_calibration=n,
        n_accepted=n_acc, errors=errors, error_upper_bound=upper, accept_share=share,
        message=(f"accept when confidence > {lam:.3f}: {n_acc} of {n} calibration items "
                 f"({share:.1%}) auto-accepted, {errors} wrong; with probability >= "
                 f"{1 - delta:g} the error among accepted items is <= {target_error:g} "
                 f"(Clopper-Pearson upper bound {upper:.3f})"),
    )


def conformal_quantile(true_label_probability: ArrayLike, alpha: float) -> float:
    """Split-conformal threshold q on the score 1 - p(true label), for coverage 1 - alpha.

    Returns ``inf`` when there are too few calibration items for that coverage (every
    label then enters the set).
    """
    if not 0 < alpha < 1:
        raise ValueError("alpha must be between 0 and 1")
    scores = np.sort(1.0 - np.asarray(true_label_probability, dtype=np.float64))
    n = len(scores)
    rank = math.ceil((n + 1) * (1 - alpha))
    if rank > n:
        return math.inf
    return float(scores[rank - 1])


def label_set(
    labels: Sequence[str], probabilities: Sequence[float], quantile: float
) -> list[str]:
    """Labels whose score 1 - p is within the conformal quantile, most probable first.

    The most probable label is always included, so the set is never empty.
    """
    order = sorted(range(len(labels)), key=lambda i: -probabilities[i])
    chosen = [labels[i] for i in order if 1.0 - probabilities[i] <= quantile + 1e-12]
    return chosen or [labels[order[0]]]
