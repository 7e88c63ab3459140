"""Guaranteed accept thresholds and conformal prediction sets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from surelabel import routing

stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize(("errors", "n"), [(0, 10), (3, 50), (20, 100), (0, 1), (7, 7)])
def test_clopper_pearson_matches_scipy(errors: int, n: int) -> None:
    delta = 0.05
    expected = 1.0 if errors == n else stats.beta.ppf(1 - delta, errors + 1, n - errors)
    assert routing.clopper_pearson_upper(errors, n, delta) == pytest.approx(expected, abs=1e-9)
    assert routing.binomial_pvalue(errors, n, 0.1) == pytest.approx(
        stats.binom.cdf(errors, n, 0.1), rel=1e-9
    )


def calibrated_sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    conf = rng.beta(5, 1.5, n)
    correct = rng.random(n) < conf
    return conf, correct


def test_threshold_meets_target_on_fresh_data() -> None:
    target, delta = 0.1, 0.1
    failures = found = 0
    for seed in range(40):
        conf, correct = calibrated_sample(1000, seed)
        result = routing.fit_accept_threshold(conf, correct, target, delta)
        if result.threshold is None:  # the scan may stop at its first test
            continue
        found += 1
        assert result.error_upper_bound is not None and result.error_upper_bound <= target
        assert 0 < result.accept_share < 1
        fresh_conf, fresh_ok = calibrated_sample(20000, 1000 + seed)
        accepted = fresh_conf > result.threshold
        failures += float(np.mean(~fresh_ok[accepted])) > target
    assert found >= 30
    assert failures <= 0.2 * 40  # at most delta of runs miss, plus sampling slack


def test_threshold_is_lowest_passing_in_the_scan() -> None:
    conf, correct = calibrated_sample(2000, 5)
    result = routing.fit_accept_threshold(conf, correct, 0.1, 0.1)
    assert result.threshold is not None
    lower = result.threshold - routing.GRID_STEP
    acc = conf > lower
    assert routing.binomial_pvalue(int((~correct[acc]).sum()), int(acc.sum()), 0.1) > 0.1
    assert "auto-accepted" in result.message
    assert result.accept_threshold == result.threshold


def test_no_threshold_accepts_nothing() -> None:
    conf = np.full(200, 0.99)
    correct = np.arange(200) % 2 == 0  # half wrong even at the top
    result = routing.fit_accept_threshold(conf, correct, 0.05, 0.1)
    assert result.threshold is None and result.accept_share == 0.0
    assert result.accept_threshold == 1.0
    assert "nothing will be auto-accepted" in result.message
    small = routing.fit_accept_threshold(np.array([0.99] * 5), np.ones(5, bool), 0.05, 0.1)
    assert small.threshold is None and "too few" in small.message


def test_round_trip_as_dict() -> None:
    conf, correct = calibrated_sample(500, 1)
    result = routing.fit_accept_threshold(conf, correct, 0.1, 0.05)
    assert routing.RoutingResult.from_dict(result.as_dict()) == result


def test_conformal_sets_cover() -> None:
    rng = np.random.default_rng(0)
    k, alpha = 5, 0.1
    logits = rng.normal(size=(4000, k)) * 2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in p])
    q = routing.conformal_quantile(p[:2000, :][np.arange(2000), y[:2000]], alpha)
    labels = [str(i) for i in range(k)]
    covered = [
        str(y[i]) in routing.label_set(labels, p[i].tolist(), q) for i in range(2000, 4000)
    ]
    assert np.mean(covered) >= 1 - alpha - 0.02
    assert math.isinf(routing.conformal_quantile([0.9, 0.8], 0.1))
    assert routing.label_set(["a", "b"], [0.7, 0.3], math.inf) == ["a", "b"]
    assert routing.label_set(["a", "b"], [0.3, 0.7], 0.0) == ["b"]
