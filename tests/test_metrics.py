"""Metric functions: equal to scikit-learn where it has them, and correct on known cases."""

from __future__ import annotations

import numpy as np
import pytest

from surelabel import metrics

sk = pytest.importorskip("sklearn.metrics")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_binary_brier_log_loss_auc_match_sklearn(rng: np.random.Generator) -> None:
    y = rng.integers(0, 2, 200)
    p = np.clip(rng.random(200) * 0.8 + y * 0.2, 0, 1)
    p[:3] = [0.0, 1.0, 0.5]  # extremes are clipped the same way
    assert metrics.brier_score_loss(y, p) == pytest.approx(sk.brier_score_loss(y, p), abs=1e-12)
    assert metrics.log_loss(y, p) == pytest.approx(sk.log_loss(y, p), abs=1e-12)
    assert metrics.roc_auc_score(y, p) == pytest.approx(sk.roc_auc_score(y, p), abs=1e-12)


def test_auc_with_ties_matches_sklearn() -> None:
    y = np.array([0, 1, 1, 0, 1, 0, 1, 1])
    s = np.array([0.5, 0.5, 0.9, 0.1, 0.5, 0.9, 0.2, 0.2])
    assert metrics.roc_auc_score(y, s) == pytest.approx(sk.roc_auc_score(y, s))


def test_multiclass_brier_and_log_loss_match_sklearn(rng: np.random.Generator) -> None:
    k = 5
    logits = rng.normal(size=(300, k)) * 2
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = rng.integers(0, k, 300)
    labels = list(range(k))
    assert metrics.log_loss(y, p) == pytest.approx(sk.log_loss(y, p, labels=labels), abs=1e-12)
    assert metrics.brier_score_loss(y, p) == pytest.approx(
        sk.brier_score_loss(y, p, labels=labels), abs=1e-12
    )


def test_two_column_brier_equals_binary_form(rng: np.random.Generator) -> None:
    y = rng.integers(0, 2, 50)
    p1 = rng.random(50)
    two = np.stack([1 - p1, p1], axis=1)
    assert metrics.brier_score_loss(y, two) == pytest.approx(metrics.brier_score_loss(y, p1))


def test_accuracy_f1_per_class_match_sklearn(rng: np.random.Generator) -> None:
    names = ["a", "b", "c", "d"]
    y = [names[i] for i in rng.integers(0, 4, 120)]
    pred = [names[i] for i in rng.integers(0, 3, 120)]  # "d" never predicted
    assert metrics.accuracy_score(y, pred) == pytest.approx(sk.accuracy_score(y, pred))
    assert metrics.macro_f1_score(y, pred, names) == pytest.approx(
        sk.f1_score(y, pred, labels=names, average="macro", zero_division=0)
    )
    per = metrics.precision_recall_per_class(y, pred, names)
    prec, rec, _, support = sk.precision_recall_fscore_support(
        y, pred, labels=names, zero_division=0
    )
    for i, name in enumerate(names):
        assert per[name]["precision"] == pytest.approx(prec[i])
        assert per[name]["recall"] == pytest.approx(rec[i])
        assert per[name]["support"] == support[i]


def test_ece_known_values() -> None:
    conf = np.array([0.9, 0.9, 0.9, 0.9, 0.6, 0.6])
    correct = np.array([1, 1, 1, 0, 1, 0])
    # Bin 0.9: acc 0.75 (gap 0.15, weight 4/6); bin 0.6: acc 0.5 (gap 0.1, weight 2/6).
    expected = 4 / 6 * 0.15 + 2 / 6 * 0.1
    assert metrics.calibration_error(conf, correct, 15, "uniform") == pytest.approx(expected)
    assert metrics.max_calibration_error(conf, correct) == pytest.approx(0.15)
    assert metrics.calibration_error(conf, correct, 2, "quantile") == pytest.approx(
        # Sorted (stable): [0.6 ok, 0.6 wrong, 0.9 ok] and [0.9 ok, 0.9 ok, 0.9 wrong].
        abs(2 / 3 - 0.7) * 0.5 + abs(2 / 3 - 0.9) * 0.5
    )


def test_ece_matches_sklearn_calibration_curve_bins(rng: np.random.Generator) -> None:
    from sklearn.calibration import calibration_curve

    conf = rng.random(500) * 0.5 + 0.5
    correct = (rng.random(500) < conf).astype(int)
    acc, mean_conf = calibration_curve(correct, conf, n_bins=10, strategy="uniform")
    curve = metrics.reliability_curve(conf, correct, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(curve.accuracy, acc)
    np.testing.assert_allclose(curve.confidence, mean_conf)


def test_debiased_ece_is_near_zero_when_calibrated() -> None:
    rng = np.random.default_rng(3)
    conf = rng.random(2000) * 0.5 + 0.5
    correct = (rng.random(2000) < conf).astype(int)
    plain = metrics.calibration_error(conf, correct, 10, "quantile")
    debiased = metrics.debiased_calibration_error(conf, correct, 10)
    assert debiased < plain
    assert debiased < 0.02


def test_risk_coverage_and_aurc() -> None:
    conf = np.array([0.9, 0.8, 0.8, 0.3])
    correct = np.array([1, 0, 1, 0])
    coverage, risk, thresholds = metrics.risk_coverage_curve(conf, correct)
    np.testing.assert_allclose(coverage, [0.25, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0.0, 1 / 3, 0.5])
    np.testing.assert_allclose(thresholds, [0.9, 0.8, 0.3])
    assert metrics.aurc_score(conf, correct) == pytest.approx((0 + 2 * (1 / 3) + 0.5) / 4)


def test_confidence_auroc_and_bootstrap() -> None:
    conf = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    correct = np.array([1, 1, 1, 0, 0, 0])
    assert metrics.confidence_auroc_score(conf, correct) == 1.0
    lo, hi = metrics.bootstrap_ci(lambda c: float(np.mean(c)), correct, n_resamples=200)
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0
    assert np.isnan(metrics.roc_auc_score([1, 1], [0.2, 0.3]))


def test_smooth_ece_small_when_calibrated_and_tracks_a_shift() -> None:
    rng = np.random.default_rng(11)
    conf = rng.random(3000) * 0.5 + 0.5
    calibrated = rng.random(3000) < conf
    shifted = rng.random(3000) < conf - 0.1
    assert metrics.smooth_calibration_error(conf, calibrated) < 0.03
    assert metrics.smooth_calibration_error(conf, shifted) == pytest.approx(0.1, abs=0.03)


def test_ece_noise_floor_is_what_a_calibrated_model_shows() -> None:
    rng = np.random.default_rng(3)
    conf = rng.uniform(0.3, 1.0, size=400)
    mean, p95 = metrics.calibration_error_noise_floor(conf, 10, "quantile")
    assert 0 < mean < p95
    assert metrics.calibration_error_noise_floor(conf, 10, "quantile") == (mean, p95)
    # Outcomes that really follow the confidences: their ECE sits in the floor's range,
    # and it shrinks about as 1/sqrt(n).
    draws = [metrics.calibration_error(conf, rng.random(400) < conf, 10, "quantile")
             for _ in range(200)]
    assert np.mean(draws) == pytest.approx(mean, rel=0.1)
    assert np.mean(np.array(draws) > p95) < 0.1
    big, _ = metrics.calibration_error_noise_floor(np.tile(conf, 16), 10, "quantile")
    assert big == pytest.approx(mean / 4, rel=0.3)
    # Certain answers carry no noise; a constant miscalibration is far above the floor.
    assert metrics.calibration_error_noise_floor(np.ones(50)) == (0.0, 0.0)
    assert metrics.calibration_error(conf, rng.random(400) < conf - 0.2, 10, "quantile") > p95
