"""The optimisers the calibrators share: golden-section search, Newton's method, PAVA.

Written by hand so that calibration needs numpy only (no scipy or scikit-learn at run
time); each is a few lines and exact for the convex or one-dimensional problems here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from surelabel._numeric import FloatArray


def golden_min(f: Callable[[float], float], lo: float, hi: float, iters: int = 80) -> float:
    """Minimum of a unimodal function on [lo, hi] by golden-section search."""
    ratio = (np.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(d)
    return float((a + b) / 2)


def newton(
    loss: Callable[[FloatArray], float],
    grad_hess: Callable[[FloatArray], tuple[FloatArray, FloatArray]],
    x0: FloatArray,
    max_iter: int,
) -> FloatArray:
    """Minimize a convex ``loss`` by Newton's method with backtracking: a full step can
    overshoot on near-separable data. Stops when the loss no longer improves.

    A step is taken only if it lowers the loss: where the Hessian vanishes (a logistic fit
    driven to probabilities of 0 or 1) the Newton step is astronomically long, and even its
    shortest backtracked fraction would throw the solution away.
    """
    x = x0
    current = loss(x)
    for _ in range(max_iter):
        grad, hess = grad_hess(x)
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-6 and not loss(x - scale * step) <= current:
            scale /= 2
        candidate = x - scale * step
        new = loss(candidate)
        if not new <= current:
            break
        x = candidate
        converged = current - new < 1e-12
        current = new
        if converged:
            break
    return x


def pava(y: FloatArray, w: FloatArray) -> FloatArray:
    """Non-decreasing least-squares fit of ``y`` (pool adjacent violators)."""
    values: list[float] = []
    weights: list[float] = []
    sizes: list[int] = []
    for yi, wi in zip(y, w, strict=True):
        values.append(float(yi))
        weights.append(float(wi))
        sizes.append(1)
        while len(values) > 1 and values[-2] > values[-1]:
            wt = weights[-2] + weights[-1]
            v = (values[-2] * weights[-2] + values[-1] * weights[-1]) / wt
            size = sizes[-2] + sizes[-1]
            del values[-1], weights[-1], sizes[-1]
            values[-1], weights[-1], sizes[-1] = v, wt, size
    return np.repeat(np.array(values), sizes)


def isotonic(x: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Isotonic regression of ``y`` on ``x``: tied ``x`` values are one point with their
    mean ``y``. Returns the distinct ``x`` (sorted), how many rows each stands for, and
    the non-decreasing fitted values."""
    order = np.argsort(x, kind="mergesort")
    uniq, start, counts = np.unique(x[order], return_index=True, return_counts=True)
    means = np.add.reduceat(y[order], start) / counts
    weights = counts.astype(np.float64)
    return uniq.astype(np.float64), weights, pava(means, weights)


def centred_isotonic(
    conf: FloatArray, correct: FloatArray, eps: float
) -> tuple[FloatArray, FloatArray]:
    """Knots of a centred isotonic fit of ``correct`` on ``conf``: one per isotonic step."""
    uniq, counts, fitted = isotonic(conf, correct)
    # A step is a run of equal fitted values; its knot is at its count-weighted mean x.
    new_step = np.concatenate([[True], fitted[1:] != fitted[:-1]])
    step = np.cumsum(new_step) - 1
    weights = np.bincount(step, weights=counts)
    xs = np.bincount(step, weights=uniq * counts) / weights
    ys = np.clip(fitted[new_step], eps, 1 - eps)
    if xs[-1] < 1.0:
        # Past the last step, rise linearly to 1 - eps at confidence 1 rather than staying
        # flat: a flat top would tie the most confident items, and routing could no
        # longer accept just the best of them.
        xs, ys = np.append(xs, 1.0), np.append(ys, max(ys[-1], 1 - eps))
    return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
