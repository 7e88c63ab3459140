"""Calibrators: estimator contract, the fitted maps, auto selection, and calibration files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from surelabel import metrics
from surelabel.calibration import (
    BiasTemperatureScaling,
    Calibration,
    ContextualCalibration,
    DirichletCalibration,
    IsotonicCalibration,
    PerLabelCalibrator,
    PlattScaling,
    TemperatureScaling,
    fit_calibration,
    label_indices,
    load,
    top_label_view,
)
from surelabel.calibration.base import softmax
from surelabel.classifier import Classifier
from surelabel.distribution import LabelDistribution
from surelabel.errors import CalibrationError
from surelabel.task import Task, load_task
from surelabel.testing import FakeBackend

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "bench" / "tasks"


def overconfident(n: int, k: int, seed: int = 0, sharpness: float = 3.0):
    """Log-probs whose softmax is ``sharpness`` times too sharp, and labels drawn from the truth."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(size=(n, k)) * 1.5
    p = softmax(true_logits)
    y = np.array([rng.choice(k, p=row) for row in p])
    return true_logits * sharpness, y


@pytest.fixture(scope="module")
def trec() -> Task:
    return load_task(TASKS / "trec.yaml")


@pytest.fixture(scope="module")
def sst2() -> Task:
    return load_task(TASKS / "sst2.yaml")


@pytest.fixture(scope="module")
def emotions() -> Task:
    return load_task(TASKS / "go_emotions.yaml")


def test_temperature_recovers_sharpness() -> None:
    x, y = overconfident(4000, 4, sharpness=3.0)
    cal = TemperatureScaling().fit(x, y)
    assert cal.temperature_ == pytest.approx(3.0, rel=0.15)
    before = metrics.log_loss(y, softmax(x))
    after = metrics.log_loss(y, cal.predict_proba(x))
    assert after < before
    # Temperature keeps the ranking, so the predicted labels do not change.
    assert (cal.predict_proba(x).argmax(1) == softmax(x).argmax(1)).all()


def test_bias_temperature_undoes_a_label_preference() -> None:
    x, y = overconfident(4000, 4, seed=5, sharpness=2.0)
    biased = x + np.array([3.0, 0.0, 0.0, 0.0])  # the model favours the first label
    cal = BiasTemperatureScaling().fit(biased, y)
    assert cal.temperature_ == pytest.approx(2.0, rel=0.15)
    assert cal.bias_[0] - cal.bias_[1:].mean() == pytest.approx(-1.5, abs=0.3)
    acc_raw = np.mean(softmax(biased).argmax(1) == y)
    acc_cal = np.mean(cal.predict_proba(biased).argmax(1) == y)
    assert acc_cal > acc_raw
    again = BiasTemperatureScaling.from_dict(cal.to_dict())
    np.testing.assert_allclose(again.predict_proba(biased[:5]), cal.predict_proba(biased[:5]))


def confused(n: int, seed: int = 0):
    """Log-probs of a model that swaps labels 0 and 1 (reads one for the other), and
    favours label 2."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, size=n)
    logits = rng.normal(size=(n, 4)) + 2.5 * np.eye(4)[y]
    logits = logits[:, [1, 0, 2, 3]]  # the model swaps labels 0 and 1 ...
    logits[:, 2] += 1.0  # ... and likes label 2
    return np.asarray(np.log(softmax(2.0 * logits))), y


def test_dirichlet_undoes_a_confusion_between_labels() -> None:
    x, y = confused(6000, seed=7)
    fit, held = slice(0, 3000), slice(3000, None)
    cal = DirichletCalibration().fit(x[fit], y[fit])
    p = cal.predict_proba(x[held])
    # The swap is a confusion no per-label bias or temperature can undo; a full map can.
    acc = {
        "raw": np.mean(softmax(x[held]).argmax(1) == y[held]),
        "bias_temperature": np.mean(
            BiasTemperatureScaling().fit(x[fit], y[fit]).predict_proba(x[held]).argmax(1)
            == y[held]
        ),
        "dirichlet": np.mean(p.argmax(1) == y[held]),
    }
    assert acc["dirichlet"] > acc["bias_temperature"] + 0.1 and acc["dirichlet"] > 0.8, acc
    assert metrics.log_loss(y[held], p) < metrics.log_loss(y[held], softmax(x[held]))
    assert cal.l2_ in cal.l2_grid  # picked by cross-validation
    again = DirichletCalibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_allclose(again.predict_proba(x[:5]), cal.predict_proba(x[:5]))


def test_dirichlet_stays_finite_when_a_label_never_occurs() -> None:
    x, y = overconfident(300, 4, seed=1)
    y[y == 3] = 0
    cal = DirichletCalibration().fit(x, y)
    assert np.isfinite(cal.weights_).all() and np.abs(cal.weights_).max() < 50
    p = cal.predict_proba(x)
    assert np.isfinite(p).all() and p[:, 3].max() < 0.1


def test_dirichlet_without_penalty_is_multinomial_logistic_regression() -> None:
    # With l2=0 (only the tiny pull of the diagonal towards 1 is left) it is the
    # maximum-likelihood multinomial logistic regression on the
    # normalized log-probabilities: scikit-learn must find the same probabilities.
    from sklearn.linear_model import LogisticRegression

    from surelabel.calibration.base import as_logprobs

    x, y = overconfident(800, 3, seed=9)
    ours = DirichletCalibration(l2=0.0).fit(x, y).predict_proba(x)
    ref = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(as_logprobs(x), y)
    np.testing.assert_allclose(ours, ref.predict_proba(as_logprobs(x)), atol=1e-5)


@pytest.mark.parametrize("cls", [PlattScaling, IsotonicCalibration])
def test_binary_calibrators_reduce_ece(cls: type) -> None:
    x, y = overconfident(3000, 2, seed=1)
    fit, held = slice(0, 1500), slice(1500, None)
    cal = cls().fit(x[fit], y[fit])
    p = cal.predict_proba(x[held])
    conf, ok = p.max(1), p.argmax(1) == y[held]
    raw = softmax(x[held])
    assert metrics.calibration_error(conf, ok, 10, "quantile") < metrics.calibration_error(
        raw.max(1), raw.argmax(1) == y[held], 10, "quantile"
    )
    assert np.allclose(p.sum(1), 1)


def test_binary_calibrators_refuse_multiclass() -> None:
    x, y = overconfident(50, 3)
    with pytest.raises(ValueError, match="binary"):
        PlattScaling().fit(x, y)


def test_contextual_divides_out_bias_without_labels() -> None:
    # Content-free inputs say 80/20: the bias. An item at 80/20 becomes 50/50.
    cf = np.log([[0.8, 0.2], [0.8, 0.2]])
    cal = ContextualCalibration().fit(cf)
    assert cal.predict_proba(np.log([[0.8, 0.2]]))[0] == pytest.approx([0.5, 0.5])
    assert cal.predict_proba(np.log([[0.5, 0.5]]))[0] == pytest.approx([0.2, 0.8])


def test_calibrate_hook_keeps_distribution_shape() -> None:
    x, y = overconfident(300, 3)
    cal = TemperatureScaling().fit(x, y)
    dist = LabelDistribution.from_logprobs(["a", "b", "c"], [-0.01, -5.0, -7.0])
    out = cal.calibrate(dist)
    assert out.labels == dist.labels and out.logprobs == dist.logprobs
    assert sum(out.probabilities) == pytest.approx(1.0)
    assert out.confidence < dist.confidence  # overconfident model, T > 1


def test_per_label_calibrator(emotions: Task) -> None:
    rng = np.random.default_rng(0)
    n, L = 300, len(emotions.labels)
    p_true = rng.random((n, L))
    y = (rng.random((n, L)) < p_true).astype(int)
    sharp = np.clip(p_true, 0.01, 0.99) ** 3
    x = np.log(np.stack([sharp, 1 - sharp], axis=2))
    cal = PerLabelCalibrator("platt", emotions.label_names).fit(x, y)
    assert cal.predict_proba(x).shape == (n, L)
    dist = LabelDistribution.from_logprobs(["true", "false"], [-0.05, -3.0])
    assert cal.calibrate(dist, "joy").labels == ("true", "false")
    with pytest.raises(CalibrationError):
        cal.calibrate(dist, None)


def test_auto_picks_by_cross_validated_log_loss(sst2: Task) -> None:
    x, y = overconfident(400, 2, seed=4)
    cf = np.log([[0.6, 0.4], [0.7, 0.3], [0.55, 0.45]])
    calibration, oof = fit_calibration(sst2, "m", x, y, content_free=cf)
    sel = calibration.selection
    assert sel is not None
    assert set(sel["cv_log_loss"]) == {
        "temperature", "bias_temperature", "dirichlet", "platt", "isotonic", "contextual",
        "none",
    }
    chosen = sel["method"]
    assert chosen == min(
        (m for m in sel["cv_log_loss"] if m != "none"), key=lambda m: sel["cv_log_loss"][m]
    )
    assert f"auto picked {chosen}" in sel["reason"]
    assert oof.shape == (400, 2)


def test_explicit_method_must_fit_the_task(trec: Task) -> None:
    x, y = overconfident(50, 6)
    with pytest.raises(CalibrationError, match="binary"):
        fit_calibration(trec, "m", x, y, method="platt")
    with pytest.raises(CalibrationError, match="content-free"):
        fit_calibration(trec, "m", x, y, method="contextual")
    with pytest.raises(CalibrationError, match="unknown"):
        fit_calibration(trec, "m", x, y, method="magic")
    with pytest.raises(CalibrationError, match="at least"):
        fit_calibration(trec, "m", x[:5], y[:5])


def test_file_round_trip_and_refusals(trec: Task, sst2: Task, tmp_path: Path) -> None:
    x, y = overconfident(300, 6, seed=2)
    calibration, _ = fit_calibration(
        trec, "model-a", x, y, method="temperature", target_error=0.2, delta=0.1, alpha=0.1
    )
    path = tmp_path / "cal.json"
    calibration.save(path)
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["model"] == "model-a"
    assert data["task"]["fingerprint"] == trec.fingerprint()
    loaded = load(path, trec, "model-a")
    assert loaded.accept_threshold == calibration.accept_threshold
    assert loaded.conformal_quantile == calibration.conformal_quantile
    np.testing.assert_allclose(
        loaded.calibrator.predict_proba(x), calibration.calibrator.predict_proba(x)
    )
    with pytest.raises(CalibrationError, match="task 'trec'"):
        load(path, sst2)
    with pytest.raises(CalibrationError, match="model 'model-a'"):
        load(path, trec, "model-b")
    changed = Task.from_dict({**trec.to_dict(), "instructions": "Something else."})
    with pytest.raises(CalibrationError, match="different version"):
        load(path, changed)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(CalibrationError, match="not a surelabel calibration"):
        load(tmp_path / "bad.json")
    with pytest.raises(CalibrationError, match="cannot read"):
        load(tmp_path / "missing.json")
    assert data["confidence_method"] == "exact"
    loaded.check_method("exact")
    with pytest.raises(CalibrationError, match="fitted on 'exact' distributions"):
        loaded.check_method("seed")
    data["version"] = 99
    (tmp_path / "new.json").write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match="version 99"):
        load(tmp_path / "new.json")


def test_classifier_applies_calibration(trec: Task) -> None:
    x, y = overconfident(300, 6, seed=3)
    calibration, _ = fit_calibration(trec, "fake", x, y, method="temperature", alpha=0.2)
    # A backend that scores labels by fixed log-probabilities (no model).
    backend = FakeBackend(model_name="fake", logprobs=[-0.01, -5, -6, -7, -8, -9],
                          capabilities={"exact_scoring": True})
    record = Classifier(trec, backend, calibrator=calibration).classify_one("What is X?", 1)
    raw = Classifier(trec, backend).classify_one("What is X?", 1)
    assert record.extra["calibrated"] is True
    assert record.confidence is not None and raw.confidence is not None
    assert record.confidence < raw.confidence
    dist = LabelDistribution.from_probabilities(record.probabilities or {})
    assert calibration.label_set(dist)


def test_label_indices_and_top_label_view(trec: Task, emotions: Task) -> None:
    assert list(label_indices(trec, ["entity", "human"])) == [1, 3]
    with pytest.raises(CalibrationError, match="not one of"):
        label_indices(trec, ["colour"])
    m = label_indices(emotions, [["joy", "fear"], [], "anger"])
    assert m.tolist()[0] == [1, 0, 0, 0, 0, 0, 1] and m[1].sum() == 0 and m[2, 2] == 1
    probs = np.array([[0.9, 0.2], [0.6, 0.4]])
    y = np.array([[1, 0], [0, 0]])
    conf, ok = top_label_view(
        Task.from_dict({"name": "t", "instructions": "i", "kind": "multilabel",
                        "labels": ["a", "b"]}),
        probs, y,
    )
    np.testing.assert_allclose(conf, [0.8, 0.6])
    assert ok.tolist() == [True, False]


def test_calibration_is_a_classifier_calibrator(trec: Task) -> None:
    from surelabel.classifier import Calibrator

    x, y = overconfident(300, 6, seed=3)
    calibration, _ = fit_calibration(trec, "m", x, y, method="temperature")
    assert isinstance(calibration, Calibration) and isinstance(calibration, Calibrator)
    assert not isinstance(object(), Calibrator)
    raw = LabelDistribution.from_logprobs(trec.label_names, [-0.01, -5, -6, -7, -8, -9])
    out = calibration.calibrate(raw)
    assert isinstance(out, LabelDistribution)
    assert out.labels == raw.labels
    assert sum(out.probabilities) == pytest.approx(1.0)
    assert not np.allclose(out.probabilities, raw.probabilities)


def test_registry_lists_the_built_ins_in_auto_order() -> None:
    # Calibrators register themselves as they are defined, so this order comes from the
    # import order in calibration/registry.py; ``auto`` tries the methods in it.
    from surelabel.calibration import CALIBRATORS
    from surelabel.calibration.fit import candidates

    built_in = ["temperature", "bias_temperature", "dirichlet", "platt", "isotonic",
                "contextual", "top_label"]
    assert list(CALIBRATORS)[: len(built_in)] == built_in
    assert candidates("binary", True) == built_in[:-1]


def test_auto_tries_dirichlet_up_to_twenty_labels() -> None:
    from surelabel.calibration.fit import DIRICHLET_AUTO_MAX_LABELS, candidates

    assert "dirichlet" in candidates("multiclass", False, DIRICHLET_AUTO_MAX_LABELS)
    assert "dirichlet" not in candidates("multiclass", False, DIRICHLET_AUTO_MAX_LABELS + 1)
    assert "dirichlet" in candidates("multilabel", False, 50)  # one 2-label map per label


def test_auto_fits_do_not_blow_up_on_a_yes_to_everything_multilabel_task() -> None:
    """Regression: a model that says yes to all 28 labels of a multilabel task, most labels
    rare, made bias_temperature and platt report cross-validated log losses of 17-25
    (uncalibrated: 3.7). Causes: Newton took a step that raised the loss when backtracking
    failed (after a fit reached p = 0, where the Hessian vanishes); bias_temperature kept the
    bias fitted with a negative 1/T it then dropped; the raw designs were nearly collinear."""
    rng = np.random.default_rng(0)
    n, k = 400, 28
    task = Task.from_dict({"name": "t", "instructions": "i", "kind": "multilabel",
                           "labels": [f"l{i}" for i in range(k)]})
    rates = np.concatenate([[0.3, 0.2, 0.1], rng.uniform(0.0, 0.006, k - 3)])
    y = (rng.random((n, k)) < rates).astype(int)
    x = np.zeros((n, k, 2))
    x[:, :, 0] = -0.02 + rng.normal(0, 0.01, (n, k))  # yes, always
    x[:, :, 1] = -4.0 + rng.normal(0, 0.05, (n, k)) - 0.3 * y
    calibration, _ = fit_calibration(task, "m", x, y)
    losses = (calibration.selection or {})["cv_log_loss"]
    raw = losses.pop("none")
    assert raw > 3.5
    assert all(v < raw for v in losses.values()), losses
    assert losses["platt"] < 0.05 and losses["bias_temperature"] < 0.05, losses
