"""Dirichlet calibration (Kull et al. 2019): a full linear map of the label log-probabilities."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike

from surelabel._numeric import FloatArray, kfold, log_softmax, softmax, train_rows
from surelabel.calibration._optim import newton
from surelabel.calibration.base import BaseCalibrator, as_logprobs, check_labels

#: Pull of Dirichlet calibration's diagonal weights towards 1 (see ``_solve``).
DIAGONAL_L2 = 1e-4


def _affine(x: FloatArray, w: FloatArray) -> FloatArray:
    """Scores ``x W^T + b`` for ``w = [W | b]``."""
    return np.asarray(x @ w[:, :-1].T + w[:, -1][None, :], dtype=np.float64)


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
            scores = dict.fromkeys(self.l2_grid, 0.0)
            for test in kfold(n, self.folds, self.seed):
                train = train_rows(n, test)
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
        return newton(loss, grad_hess, theta0, self.max_iter).reshape(k, k + 1)

    def _transform(self, logprobs: FloatArray) -> FloatArray:
        w = np.concatenate([self.weights_, self.bias_[:, None]], axis=1)
        return softmax(_affine(logprobs, w))
