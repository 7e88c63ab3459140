"""How sure a calibration is of itself: what a few hundred labelled rows leave open.

A calibration fitted on few rows has an uncertain held-out ECE and an accept threshold that
would move with other rows. :func:`assess` says how much, by bootstrap over the
out-of-fold calibrated probabilities (the rows were not fitted on them), and how many
labelled rows would bring the accept threshold's guarantee within a given width of the
error rate it observes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from surelabel import metrics
from surelabel._numeric import FloatArray
from surelabel.routing import RoutingResult, clopper_pearson_upper, fit_accept_threshold

#: Fewer labelled rows than this and ``surelabel calibrate`` warns: held-out ECE and the
#: chosen method are then mostly noise (the interval it prints shows how much).
MIN_RECOMMENDED_ROWS = 200
#: Bootstrap resamples of the intervals.
N_BOOTSTRAP = 200


def rows_for_width(
    error_rate: float, accept_share: float, width: float, delta: float,
    limit: int = 10_000_000,
) -> int | None:
    """Labelled rows needed so that, at this accept share and observed error rate among
    accepted items, the (1 - delta) Clopper-Pearson bound on that error rate lies within
    ``width`` of it. ``None`` when nothing is accepted."""
    if accept_share <= 0:
        return None

    def wide(n_acc: int) -> bool:
        errors = math.floor(error_rate * n_acc)
        return clopper_pearson_upper(errors, n_acc, delta) - errors / n_acc > width

    hi = 1
    while wide(hi):
        hi *= 2
        if hi > limit:
            return None
    lo = max(1, hi // 2)
    while lo < hi:
        mid = (lo + hi) // 2
        if wide(mid):
            lo = mid + 1
        else:
            hi = mid
    return math.ceil(hi / accept_share)


def assess(
    confidence: FloatArray,
    correct: NDArray[np.bool_],
    row_confidence: FloatArray,
    row_correct: NDArray[np.bool_],
    *,
    routing: RoutingResult | None,
    width: float = 0.05,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
) -> dict[str, Any]:
    """The uncertainty of a calibration fitted on these rows.

    ``confidence``/``correct``: the out-of-fold calibrated answers (for ECE);
    ``row_*``: the same per row as the classifier decides (for the accept threshold).
    """
    n = len(row_confidence)
    ece = metrics.calibration_error(confidence, correct, 10, "quantile")
    lo, hi = metrics.bootstrap_ci(
        lambda c, o: metrics.calibration_error(c, o, 10, "quantile"),
        confidence, correct, n_resamples=n_bootstrap, seed=seed)
    out: dict[str, Any] = {
        "n_rows": n,
        "ece_equal_mass": ece,
        "ece_ci95": [lo, hi],
        "min_recommended_rows": MIN_RECOMMENDED_ROWS,
        "warning": None if n >= MIN_RECOMMENDED_ROWS else (
            f"only {n} labelled rows (at least {MIN_RECOMMENDED_ROWS} recommended): the "
            f"held-out ECE is somewhere in [{lo:.3f}, {hi:.3f}] and the chosen method and "
            "threshold may change with more rows"),
    }
    if routing is None:
        return out
    rng = np.random.default_rng(seed)
    thresholds, shares = [], []
    for _ in range(n_bootstrap):
        idx = rng.integers(0, n, n)
        r = fit_accept_threshold(row_confidence[idx], row_correct[idx], routing.target_error,
                                 routing.delta)
        thresholds.append(r.accept_threshold)
        shares.append(r.accept_share)
    out["threshold_ci95"] = [float(np.percentile(thresholds, 2.5)),
                             float(np.percentile(thresholds, 97.5))]
    out["accept_share_ci95"] = [float(np.percentile(shares, 2.5)),
                                float(np.percentile(shares, 97.5))]
    out["guarantee_width"] = width
    if routing.threshold is None or routing.n_accepted == 0:
        out["rows_for_width"] = None
        return out
    rate = routing.errors / routing.n_accepted
    bound = routing.error_upper_bound if routing.error_upper_bound is not None else 1.0
    out["error_rate_accepted"] = rate
    out["error_bound_width"] = bound - rate
    out["rows_for_width"] = rows_for_width(rate, routing.accept_share, width, routing.delta)
    return out


def describe(u: dict[str, Any]) -> list[str]:
    """What :func:`assess` found, as lines for the terminal."""
    lines = [f"held-out ECE (equal-mass bins) {u['ece_equal_mass']:.3f}, 95% interval "
             f"[{u['ece_ci95'][0]:.3f}, {u['ece_ci95'][1]:.3f}] over {u['n_rows']} rows"]
    if "threshold_ci95" in u:
        t_lo, t_hi = u["threshold_ci95"]
        s_lo, s_hi = u["accept_share_ci95"]
        lines.append(f"accept threshold would lie in [{t_lo:.3f}, {t_hi:.3f}] (accepting "
                     f"{s_lo:.0%} to {s_hi:.0%} of items) with other rows like these")
        need = u.get("rows_for_width")
        if need is not None:
            more = max(0, need - u["n_rows"])
            lines.append(
                f"the bound on the error among accepted items is {u['error_bound_width']:.3f} "
                f"above the observed {u['error_rate_accepted']:.3f}; within "
                f"{u['guarantee_width']:g} it needs about {need} labelled rows "
                + (f"({more} more)" if more else "(already met)"))
    if u.get("warning"):
        lines.append("warning: " + u["warning"])
    return lines
