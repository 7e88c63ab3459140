"""Small numerical helpers shared by the scorers, the calibrators and the evaluation code.

One of each: the log-softmax every module uses, the floor used when a probability is turned
back into a log-probability, and the K-fold split used wherever rows are cross-fitted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]

#: Smallest probability a log-probability is taken of (a probability of 0, e.g. a rounded
#: record value or an empty vote share, becomes log(1e-12) rather than -inf).
PROBABILITY_FLOOR = 1e-12
LOG_PROBABILITY_FLOOR = math.log(PROBABILITY_FLOOR)


def log_softmax(x: ArrayLike, axis: int = -1) -> FloatArray:
    """Log-softmax along ``axis``, in float64 (logits of float32 models are upcast first)."""
    arr = np.asarray(x, dtype=np.float64)
    m = np.max(arr, axis=axis, keepdims=True)
    z = arr - m
    return np.asarray(z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True)), dtype=np.float64)


def softmax(x: ArrayLike, axis: int = -1) -> FloatArray:
    return np.asarray(np.exp(log_softmax(x, axis=axis)), dtype=np.float64)


def logsumexp_at(logprobs: FloatArray, tokens: NDArray[np.int64]) -> float:
    """log of the total probability of ``tokens`` under normalized ``logprobs``."""
    sel = logprobs[tokens]
    m = float(sel.max())
    return float(m + np.log(np.exp(sel - m).sum()))


def safe_log(probabilities: Sequence[float] | ArrayLike) -> FloatArray:
    """log(p), with p floored at :data:`PROBABILITY_FLOOR`."""
    return np.asarray(
        np.log(np.maximum(np.asarray(probabilities, dtype=np.float64), PROBABILITY_FLOOR)),
        dtype=np.float64,
    )


def kfold(n: int, k: int, seed: int) -> list[NDArray[np.intp]]:
    """``k`` disjoint test folds covering ``range(n)``: a seeded permutation cut into nearly
    equal parts, each part sorted. The training rows of a fold are the others."""
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(fold) for fold in np.array_split(order, k)]


def train_rows(n: int, test: NDArray[np.intp]) -> NDArray[np.intp]:
    """The rows of ``range(n)`` outside ``test``, sorted."""
    return np.setdiff1d(np.arange(n), test)
