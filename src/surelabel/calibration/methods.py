"""The calibration methods.

- :class:`TemperatureScaling` (Guo et al. 2017): divide the label log-probabilities by one
  learned temperature. Keeps the ranking of labels, so accuracy is unchanged.
- :class:`PlattScaling` (Platt 1999): logistic regression on the log-odds of a binary
  distribution, with Platt's smoothed targets.
- :class:`IsotonicCalibration` (Zadrozny & Elkan 2002): a monotone step function of the
  log-odds, fitted by pool-adjacent-violators.
- :class:`ContextualCalibration` (Zhao et al. 2021): the model's bias is its label
  distribution for content-free inputs ("N/A", "", "[MASK]"); dividing it out needs no
  labels at all. ``fit`` takes the content-free inputs' log-probabilities.
- :class:`TopLabelCalibration` (Gupta & Ramdas 2021): another calibrator, then a centred
  isotonic map of its top-label confidence, fitted on cross-fitted confidences.
- :class:`PerLabelCalibrator`: one binary calibrator per label of a multilabel task.

All are numpy only (no scikit-learn or scipy at run time).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike

from surelabel.calibration.base import (
    BaseCalibrator,
    FloatArray,
    as_logprobs,
    check_labels,
    distribution_logprobs,
    log_softmax,
    softmax,
)
from surelabel.distribution import LabelDistribution
from surelabel.errors import CalibrationError, NotFittedError


def _nll(logprobs: FloatArray, y: np.ndarray[Any, Any]) -> float:
    return float(-np.mean(logprobs[np.arange(len(y)), y]))


def _golden_min(f: Any, lo: float, hi: float, iters: int = 80) -> float:
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
        log_t = _golden_min(
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
        onehot = np.zeros_like(x)
        onehot[np.arange(n), labels] = 1.0
        # Features of label j for item i: (x_ij, e_j); parameters theta = (1/T, b_1..b_k).
        phi = np.concatenate([x[:, :, None], np.broadcast_to(np.eye(k), (n, k, k))], axis=2)
        ridge = np.full(k + 1, self.l2)
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
            return grad, hess + 1e-9 * np.eye(k + 1)

        theta0 = np.zeros(k + 1)
        theta0[0] = 1.0
        theta = _newton(loss, grad_hess, theta0, self.max_iter)
        self.temperature_ = float(1.0 / theta[0]) if theta[0] > 0 else float("inf")
        self.bias_ = np.asarray(theta[1:], dtype=np.float64)
        self.n_classes_ = k
        return self

    def _transform(self, logprobs: FloatArray) -> FloatArray:
        inv_t = 0.0 if np.isinf(self.temperature_) else 1.0 / self.temperature_
        return softmax(logprobs * inv_t + self.bias_[None, :])


class DirichletCalibration(BaseCalibrator):
    """softmax(W log p + b): a full linear map of the label log-probabilities.

    "Dirichlet calibration" (Kull et al. 2019), i.e. multinomial logistic regression on the
    log-probabilities, with their ODIR penalty: an L2 penalty on the off-diagonal weights
    and the biases (and only a tiny one, towards 1, on the diagonal). Each label's
    calibrated score may depend on the others' (a model that confuses two labels has its
    confusion undone), so it can change the predicted label. For two labels it is beta
    calibration (Kull et al. 2017). The log loss is convex, so Newton's method finds the
    optimum.

    Parameters
    ----------
    l2:
        Penalty weight; ``None`` picks it from ``l2_grid`` by ``folds``-fold
        cross-validated log loss on the rows given to ``fit``.
    l2_grid, folds, seed:
        The candidates and the cross-validation of that choice.
    max_iter:
        Newton iterations per fit.
    """

    method: ClassVar[str] = "dirichlet"
    _state: ClassVar[tuple[str, ...]] = ("weights_", "bias_", "l2_")

    def __init__(
        self,
        l2: float | None = None,
        l2_grid: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0),
        folds: int = 5,
        seed: int = 0,
        max_iter: int = 50,
    ) -> None:
        self.l2 = l2
        self.l2_grid = l2_grid
        self.folds = folds
        self.seed = seed
        self.max_iter = max_iter

    def fit(self, logprobs: ArrayLike, y: ArrayLike | None = None) -> DirichletCalibration:
        x = as_logprobs(logprobs)
        n, k = x.shape
        labels = check_labels(y, n, k)
        if self.l2 is not None:
            l2 = float(self.l2)
        elif len(self.l2_grid) == 1 or n < 2 * self.folds:
            l2 = float(max(self.l2_grid))
        else:
            order = np.random.default_rng(self.seed).permutation(n)
            scores = dict.fromkeys(self.l2_grid, 0.0)
            for test in np.array_split(order, self.folds):
                train = np.setdiff1d(order, test)
                w = None
                # Strongest penalty first; each solution starts the next, weaker one.
                for lam in sorted(self.l2_grid, reverse=True):
                    w = self._solve(x[train], labels[train], lam, w)
                    lp = log_softmax(_affine(x[test], w))
                    scores[lam] -= float(lp[np.arange(len(test)), labels[test]].sum())
            # On a tie the stronger penalty wins.
            l2 = float(min(sorted(scores, reverse=True), key=lambda lam: scores[lam]))
        w = self._solve(x, labels, l2)
        self.weights_ = np.asarray(w[:, :k], dtype=np.float64)
        self.bias_ = np.asarray(w[:, k], dtype=np.float64)
        self.l2_ = l2
        self.n_classes_ = k
        return self

    def _solve(
        self, x: FloatArray, labels: np.ndarray[Any, Any], l2: float,
        start: FloatArray | None = None,
    ) -> FloatArray:
        """The (k, k + 1) matrix [W | b] minimizing the penalized log loss (Newton's method
        from ``start``, by default the identity map)."""
        n, k = x.shape
        feats = np.concatenate([x, np.ones((n, 1))], axis=1)
        onehot = np.zeros((n, k))
        onehot[np.arange(n), labels] = 1.0
        identity = np.concatenate([np.eye(k), np.zeros((k, 1))], axis=1).ravel()
        # Off-diagonal weights and biases shrink to 0 with weight l2. The diagonal is
        # nearly free: a tiny pull towards 1 keeps it finite when a label never occurs
        # in the rows (its weight would otherwise grow without bound).
        penalty = np.full((k, k + 1), l2)
        penalty[np.arange(k), np.arange(k)] = DIAGONAL_L2
        pen = penalty.ravel()
        jitter = 1e-9 * np.eye(k * (k + 1))

        def loss(theta: FloatArray) -> float:
            lp = log_softmax(feats @ theta.reshape(k, k + 1).T)
            return float(-np.mean(lp[np.arange(n), labels])
                         + 0.5 * pen @ (theta - identity) ** 2)

        def grad_hess(theta: FloatArray) -> tuple[FloatArray, FloatArray]:
            p = softmax(feats @ theta.reshape(k, k + 1).T)
            grad = ((p - onehot).T @ feats).ravel() / n + pen * (theta - identity)
            # Sum over items of (diag(p) - p p^T) (x) f f^T, as one matrix product.
            cov = (p[:, :, None] * np.eye(k)[None] - p[:, :, None] * p[:, None, :])
            outer = feats[:, :, None] * feats[:, None, :]
            hess = (cov.reshape(n, k * k).T @ outer.reshape(n, -1)).reshape(k, k, k + 1, k + 1)
            hess = hess.transpose(0, 2, 1, 3).reshape(k * (k + 1), k * (k + 1))
            hess = hess / n + np.diag(pen) + jitter
            return grad, hess

        theta0 = identity if start is None else start.ravel()
        return _newton(loss, grad_hess, theta0, self.max_iter).reshape(k, k + 1)

    def _transform(self, logprobs: FloatArray) -> FloatArray:
        w = np.concatenate([self.weights_, self.bias_[:, None]], axis=1)
        return softmax(_affine(logprobs, w))


#: Pull of Dirichlet calibration's diagonal weights towards 1 (see ``_solve``).
DIAGONAL_L2 = 1e-4


def _affine(x: FloatArray, w: FloatArray) -> FloatArray:
    """Scores ``x W^T + b`` for ``w = [W | b]``."""
    return np.asarray(x @ w[:, :-1].T + w[:, -1][None, :], dtype=np.float64)


def _newton(
    loss: Callable[[FloatArray], float],
    grad_hess: Callable[[FloatArray], tuple[FloatArray, FloatArray]],
    x0: FloatArray,
    max_iter: int,
) -> FloatArray:
    """Minimize a convex ``loss`` by Newton's method with backtracking: a full step can
    overshoot on near-separable data. Stops when the loss no longer improves."""
    x = x0
    current = loss(x)
    for _ in range(max_iter):
        grad, hess = grad_hess(x)
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-6 and loss(x - scale * step) > current:
            scale /= 2
        x = x - scale * step
        new = loss(x)
        converged = current - new < 1e-12
        current = new
        if converged:
            break
    return x


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
        design = np.stack([s, np.ones_like(s)], axis=1)

        def loss(w: FloatArray) -> float:
            z = design @ w
            # Cross-entropy with soft targets, written stably: log(1 + e^z) - t z.
            return float(np.mean(np.logaddexp(0.0, z) - t * z))

        def grad_hess(w: FloatArray) -> tuple[FloatArray, FloatArray]:
            p = _sigmoid(design @ w)
            grad = design.T @ (p - t)
            hess = design.T @ (design * (p * (1 - p))[:, None]) + 1e-9 * np.eye(2)
            return grad, hess

        w = _newton(loss, grad_hess, np.array([1.0, 0.0]), self.max_iter)
        self.a_, self.b_ = float(w[0]), float(w[1])
        self.n_classes_ = 2
        return self

    def _transform(self, logprobs: FloatArray) -> FloatArray:
        p = _sigmoid(self.a_ * _binary_scores(logprobs, self.method) + self.b_)
        return np.stack([p, 1 - p], axis=1)


def _pava(y: FloatArray, w: FloatArray) -> FloatArray:
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


class IsotonicCalibration(BaseCalibrator):
    """A non-decreasing map from the log-odds to P(first label), linear between fitted points.

    Parameters
    ----------
    eps:
        Calibrated probabilities are kept in [eps, 1 - eps]: a step function fitted on a few
        hundred items would otherwise claim certainty (and an infinite log loss).
    """

    method: ClassVar[str] = "isotonic"
    _state: ClassVar[tuple[str, ...]] = ("x_", "y_")

    def __init__(self, eps: float = 1e-3) -> None:
        self.eps = eps

    def fit(self, logprobs: ArrayLike, y: ArrayLike | None = None) -> IsotonicCalibration:
        x = as_logprobs(logprobs)
        s = _binary_scores(x, self.method)
        labels = check_labels(y, len(x), 2)
        order = np.argsort(s, kind="mergesort")
        s_sorted = s[order]
        target = (labels[order] == 0).astype(np.float64)
        # Tied scores are one point with their mean target.
        uniq, start, counts = np.unique(s_sorted, return_index=True, return_counts=True)
        means = np.add.reduceat(target, start) / counts
        fitted = _pava(means, counts.astype(np.float64))
        self.x_ = uniq.astype(np.float64)
        self.y_ = np.clip(fitted, self.eps, 1 - self.eps)
        self.n_classes_ = 2
        return self

    def _transform(self, logprobs: FloatArray) -> FloatArray:
        p = np.interp(_binary_scores(logprobs, self.method), self.x_, self.y_)
        return np.stack([p, 1 - p], axis=1)


class ContextualCalibration(BaseCalibrator):
    """Divide out the model's bias measured on content-free inputs (Zhao et al. 2021).

    ``fit`` takes the label log-probabilities the model gives to content-free inputs such as
    ``"N/A"``, ``""`` and ``"[MASK]"`` (see :data:`CONTENT_FREE`); their mean distribution
    ``p_cf`` is the bias, and a calibrated distribution is proportional to ``p / p_cf``.
    True labels are not needed (``y`` is ignored).
    """

    method: ClassVar[str] = "contextual"
    needs_labels: ClassVar[bool] = False
    _state: ClassVar[tuple[str, ...]] = ("bias_",)

    def __init__(self) -> None:
        pass

    def fit(self, logprobs: ArrayLike, y: ArrayLike | None = None) -> ContextualCalibration:
        del y
        x = as_logprobs(logprobs)
        self.bias_ = np.log(np.mean(np.exp(x), axis=0))
        self.n_classes_ = x.shape[1]
        return self

    def _transform(self, logprobs: FloatArray) -> FloatArray:
        return softmax(logprobs - self.bias_[None, :])


class TopLabelCalibration(BaseCalibrator):
    """A base calibrator followed by a recalibration of its top-label confidence.

    "Top-label calibration" (Gupta & Ramdas 2021): what a user reads, and what routing
    thresholds, is the confidence of the predicted label, so that one number is mapped to
    the observed accuracy. The base calibrator's out-of-fold confidences (``folds``-fold
    cross-fitting on the rows given to ``fit``) and whether each prediction was right are
    fitted by isotonic regression; the map is then linear between the centres of the
    isotonic steps ("centred" isotonic regression), which keeps the ranking of items
    and avoids the ties of a step function. The base is then refitted on all rows.

    At prediction time the top label's probability is replaced by the mapped confidence and
    the other labels share the rest in their old proportions. The predicted label never
    changes: a mapped confidence too low for that is raised just above the runner-up.

    Parameters
    ----------
    base:
        Name of the base calibrator (any labelled method in :data:`CALIBRATORS`).
    folds:
        Cross-fitting folds for the base's out-of-fold confidences.
    seed:
        Seed of the fold assignment.
    eps:
        Mapped confidences are kept in [eps, 1 - eps].
    """

    method: ClassVar[str] = "top_label"
    _state: ClassVar[tuple[str, ...]] = ("x_", "y_")

    def __init__(
        self, base: str = "temperature", folds: int = 5, seed: int = 0, eps: float = 1e-3
    ) -> None:
        self.base = base
        self.folds = folds
        self.seed = seed
        self.eps = eps

    def _make_base(self) -> BaseCalibrator:
        cls = CALIBRATORS.get(self.base)
        if cls is None or not cls.needs_labels or cls is TopLabelCalibration:
            raise CalibrationError(
                f"top_label: base must be a calibrator fitted on labels, got {self.base!r}"
            )
        return cls()

    def fit(self, logprobs: ArrayLike, y: ArrayLike | None = None) -> TopLabelCalibration:
        x = as_logprobs(logprobs)
        n, k = x.shape
        labels = check_labels(y, n, k)
        n_folds = max(2, min(self.folds, n))
        order = np.random.default_rng(self.seed).permutation(n)
        oof = np.zeros_like(x)
        for test in np.array_split(order, n_folds):
            train = np.setdiff1d(np.arange(n), test)
            oof[test] = self._make_base().fit(x[train], labels[train]).predict_proba(x[test])
        self.x_, self.y_ = _centred_isotonic(
            oof.max(axis=1), (oof.argmax(axis=1) == labels).astype(np.float64), self.eps
        )
        self.base_ = self._make_base().fit(x, labels)
        self.n_classes_ = k
        return self

    def _transform(self, logprobs: FloatArray) -> FloatArray:
        p = self.base_.predict_proba(logprobs)
        rows = np.arange(len(p))
        top = p.argmax(axis=1)
        p1 = p[rows, top]
        p2 = np.sort(p, axis=1)[:, -2]
        # The lowest top confidence that keeps the top label on top after rescaling.
        floor = p2 / np.maximum(1 - p1 + p2, 1e-12)
        conf = np.maximum(np.interp(p1, self.x_, self.y_), np.minimum(floor + 1e-9, 1.0))
        out = p * ((1 - conf) / np.maximum(1 - p1, 1e-12))[:, None]
        out[rows, top] = conf
        return np.asarray(out, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["state"]["base_"] = self.base_.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TopLabelCalibration:
        obj = super().from_dict(data)
        assert isinstance(obj, TopLabelCalibration)
        try:
            base = data["state"]["base_"]
            obj.base_ = CALIBRATORS[base["method"]].from_dict(base)
        except (KeyError, TypeError) as exc:
            raise CalibrationError(f"top_label calibrator: malformed state ({exc})") from exc
        return obj


def _centred_isotonic(
    conf: FloatArray, correct: FloatArray, eps: float
) -> tuple[FloatArray, FloatArray]:
    """Knots of a centred isotonic fit of ``correct`` on ``conf``: one per isotonic step."""
    order = np.argsort(conf, kind="mergesort")
    uniq, start, counts = np.unique(conf[order], return_index=True, return_counts=True)
    means = np.add.reduceat(correct[order], start) / counts
    fitted = _pava(means, counts.astype(np.float64))
    # A step is a run of equal fitted values; its knot is at its count-weighted mean x.
    new_step = np.concatenate([[True], fitted[1:] != fitted[:-1]])
    step = np.cumsum(new_step) - 1
    weights = np.bincount(step, weights=counts.astype(np.float64))
    xs = np.bincount(step, weights=uniq * counts) / weights
    ys = np.clip(fitted[new_step], eps, 1 - eps)
    if xs[-1] < 1.0:
        # Past the last step, rise linearly to 1 - eps at confidence 1 rather than staying
        # flat: a flat top would tie the most confident items, and routing could no
        # longer accept just the best of them.
        xs, ys = np.append(xs, 1.0), np.append(ys, max(ys[-1], 1 - eps))
    return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)


#: Content-free inputs used to estimate a model's label bias (Zhao et al. 2021).
CONTENT_FREE: tuple[str, ...] = ("N/A", "", "[MASK]")

CALIBRATORS: dict[str, type[BaseCalibrator]] = {
    cls.method: cls
    for cls in (
        TemperatureScaling,
        BiasTemperatureScaling,
        DirichletCalibration,
        PlattScaling,
        IsotonicCalibration,
        ContextualCalibration,
        TopLabelCalibration,
    )
}
#: Methods that only apply to binary (two-label) distributions.
BINARY_ONLY = ("platt", "isotonic")
#: Methods that wrap another one; ``auto`` does not try them as a base.
WRAPPERS = ("top_label",)


def make_calibrator(method: str, **params: Any) -> BaseCalibrator:
    try:
        cls = CALIBRATORS[method]
    except KeyError:
        raise CalibrationError(
            f"unknown calibration method {method!r}; expected one of {', '.join(CALIBRATORS)}"
        ) from None
    return cls(**params)


class PerLabelCalibrator:
    """One binary calibrator per label of a multilabel task.

    ``fit`` takes an (n, L, 2) array of each label's (true, false) log-probabilities and an
    (n, L) array of 0/1 (1 = the label applies). For contextual calibration pass the
    content-free inputs' (m, L, 2) log-probabilities and ``y=None``.
    """

    def __init__(self, method: str, labels: tuple[str, ...] | list[str]) -> None:
        self.method = method
        self.labels = labels

    def fit(self, logprobs: ArrayLike, y: ArrayLike | None = None) -> PerLabelCalibrator:
        x = np.asarray(logprobs, dtype=np.float64)
        if x.ndim != 3 or x.shape[1] != len(self.labels) or x.shape[2] != 2:
            raise ValueError(f"expected an (n, {len(self.labels)}, 2) array, got {x.shape}")
        yy = None if y is None else np.asarray(y)
        fitted: dict[str, BaseCalibrator] = {}
        for j, name in enumerate(self.labels):
            # Index 0 of each (true, false) pair is "true".
            target = None if yy is None else np.where(yy[:, j].astype(bool), 0, 1)
            fitted[name] = make_calibrator(self.method).fit(x[:, j, :], target)
        self.calibrators_ = fitted
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "calibrators_"):
            raise NotFittedError("this PerLabelCalibrator is not fitted yet; call fit() first")

    def predict_proba(self, logprobs: ArrayLike) -> FloatArray:
        """(n, L) probability that each label applies."""
        self._check_fitted()
        x = np.asarray(logprobs, dtype=np.float64)
        cols = [self.calibrators_[name].predict_proba(x[:, j, :])[:, 0]
                for j, name in enumerate(self.labels)]
        return np.stack(cols, axis=1)

    def calibrate(
        self, distribution: LabelDistribution, label: str | None = None
    ) -> LabelDistribution:
        self._check_fitted()
        if label is None or label not in self.calibrators_:
            raise CalibrationError(
                f"multilabel calibration needs one of the task's labels, got {label!r}"
            )
        row = distribution_logprobs(distribution)[None, :]
        p = self.calibrators_[label].predict_proba(row)[0]
        return distribution.with_probabilities(p.tolist())

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        del deep
        return {"method": self.method, "labels": list(self.labels)}

    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "method": self.method,
            "per_label": {name: c.to_dict() for name, c in self.calibrators_.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PerLabelCalibrator:
        try:
            per = data["per_label"]
            obj = cls(data["method"], tuple(per))
            obj.calibrators_ = {
                name: CALIBRATORS[item["method"]].from_dict(item) for name, item in per.items()
            }
        except (KeyError, TypeError) as exc:
            raise CalibrationError(f"per-label calibrator: malformed state ({exc})") from exc
        return obj


Calibrator = BaseCalibrator | PerLabelCalibrator


def calibrator_from_dict(data: dict[str, Any]) -> Calibrator:
    """Rebuild a fitted calibrator from :meth:`to_dict` data."""
    if not isinstance(data, dict) or "method" not in data:
        raise CalibrationError("calibrator: expected a mapping with a 'method'")
    if "per_label" in data:
        return PerLabelCalibrator.from_dict(data)
    method = data["method"]
    if method not in CALIBRATORS:
        raise CalibrationError(f"calibrator: unknown method {method!r}")
    return CALIBRATORS[method].from_dict(data)

