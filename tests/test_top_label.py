"""Top-label recalibration (TopLabelCalibration and ``fit_calibration(method="top_label")``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from surelabel import metrics
from surelabel.calibration import (
    CALIBRATORS,
    TemperatureScaling,
    TopLabelCalibration,
    fit_calibration,
    load,
)
from surelabel.calibration.base import softmax
from surelabel.calibration.fit import candidates
from surelabel.calibration.registry import calibrator_from_dict
from surelabel.distribution import LabelDistribution
from surelabel.errors import CalibrationError, NotFittedError
from surelabel.task import Task, load_task

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "bench" / "tasks"


def noisy(n: int, k: int, seed: int = 0, noise: float = 0.3):
    """Overconfident log-probs whose labels are also replaced at random with rate ``noise``.

    The accuracy is then an affine, not a tempered, function of the true probability, which
    temperature scaling alone cannot match.
    """
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * 2.0
    p = softmax(logits)
    y = np.array([rng.choice(k, p=row) for row in p])
    flip = rng.random(n) < noise
    y[flip] = rng.integers(0, k, int(flip.sum()))
    return logits * 3.0, y


def top_ece(p: np.ndarray, y: np.ndarray) -> float:
    return metrics.calibration_error(p.max(1), p.argmax(1) == y, 10, "quantile")


@pytest.fixture(scope="module")
def trec() -> Task:
    return load_task(TASKS / "trec.yaml")


@pytest.fixture(scope="module")
def emotions() -> Task:
    return load_task(TASKS / "go_emotions.yaml")


def test_estimator_contract() -> None:
    est = TopLabelCalibration(base="bias_temperature", folds=3)
    assert not [k for k in vars(est) if k.endswith("_")]
    with pytest.raises(NotFittedError):
        est.predict_proba(np.zeros((1, 2)))
    with pytest.raises(NotFittedError):
        est.calibrate(LabelDistribution.from_logprobs(["a", "b"], [-0.1, -2.0]))
    x, y = noisy(200, 3)
    assert est.fit(x, y) is est
    assert {"x_", "y_", "base_", "n_classes_"} <= set(vars(est))
    assert est.get_params() == {"base": "bias_temperature", "folds": 3, "seed": 0, "eps": 1e-3}
    assert "top_label" in CALIBRATORS and "top_label" not in candidates("multiclass", True)


def test_clone_with_scikit_learn() -> None:
    from sklearn.base import clone

    est = TopLabelCalibration(base="temperature", folds=4)
    copy = clone(est)
    assert copy.get_params() == est.get_params() and not hasattr(copy, "x_")


def test_keeps_labels_and_improves_held_out_ece() -> None:
    x, y = noisy(4000, 4, seed=1)
    fit, held = slice(0, 2000), slice(2000, None)
    base = TemperatureScaling().fit(x[fit], y[fit])
    top = TopLabelCalibration(base="temperature").fit(x[fit], y[fit])
    p_base, p_top = base.predict_proba(x[held]), top.predict_proba(x[held])
    assert np.allclose(p_top.sum(1), 1)
    assert (p_top.argmax(1) == p_base.argmax(1)).all()
    assert top_ece(p_top, y[held]) < top_ece(p_base, y[held])
    # The map's knots rise in confidence, and its values do not fall.
    assert np.all(np.diff(top.x_) > 0) and np.all(np.diff(top.y_) >= 0)


def test_round_trip_and_bad_base() -> None:
    x, y = noisy(300, 3, seed=2)
    est = TopLabelCalibration(base="bias_temperature").fit(x, y)
    again = calibrator_from_dict(est.to_dict())
    assert isinstance(again, TopLabelCalibration)
    np.testing.assert_allclose(again.predict_proba(x), est.predict_proba(x))
    for base in ("contextual", "top_label", "magic"):
        with pytest.raises(CalibrationError, match="base"):
            TopLabelCalibration(base=base).fit(x, y)


def test_fit_calibration_top_label(trec: Task, tmp_path: Path) -> None:
    x, y = noisy(300, 6, seed=3)
    calibration, oof = fit_calibration(trec, "m", x, y, method="top_label", target_error=0.3)
    assert calibration.method == "top_label"
    sel = calibration.selection
    assert sel is not None and sel["method"] in ("temperature", "bias_temperature")
    assert "top_label picked" in sel["reason"] and "top-label confidence" in sel["reason"]
    assert oof.shape == (300, 6) and np.allclose(oof.sum(1), 1)
    assert calibration.routing is not None
    path = tmp_path / "cal.json"
    calibration.save(path)
    loaded = load(path)
    np.testing.assert_allclose(
        loaded.calibrator.predict_proba(x), calibration.calibrator.predict_proba(x)
    )
    # auto alone does not add the step.
    plain, _ = fit_calibration(trec, "m", x, y)
    assert plain.method == sel["method"]


def test_fit_calibration_top_label_limits(trec: Task, emotions: Task) -> None:
    x, y = noisy(50, 6, seed=4)
    few, _ = fit_calibration(trec, "m", x, y, method="top_label")
    assert few.method != "top_label"
    assert few.selection is not None and "skipped" in few.selection["reason"]
    xm = np.zeros((20, len(emotions.label_names), 2))
    ym = np.zeros((20, len(emotions.label_names)), dtype=int)
    with pytest.raises(CalibrationError, match="single-label"):
        fit_calibration(emotions, "m", xm, ym, method="top_label")
