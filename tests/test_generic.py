"""The generic (task-independent) calibration: features, fitting, applying, files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from surelabel import metrics
from surelabel.calibration.generic import (
    FEATURES,
    GenericCalibration,
    accept_gate,
    features,
    fit_generic,
    load_generic,
)
from surelabel.distribution import LabelDistribution
from surelabel.errors import CalibrationError

SCORING = {"prompt": "placeholder", "permutations": 1, "debias": True}


def _task_answers(rng: np.random.Generator, n: int, k: int, sharpness: float,
                  skill: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic answers of one task: the model's top probability overstates how often it
    is right (``skill`` < 1), more so for sharper (``sharpness``) distributions."""
    logits = rng.normal(0, sharpness, (n, k))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    right = rng.random(n) < skill * probs.max(axis=1)
    mass = rng.uniform(0.3, 1.0, n)
    return probs, mass, right


def _sets(seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, bool]]:
    rng = np.random.default_rng(seed)
    out = []
    for i, (k, sharp, skill) in enumerate([(2, 2.0, 0.9), (4, 3.0, 0.7), (6, 2.5, 0.6),
                                           (20, 4.0, 0.5), (3, 1.5, 0.8)]):
        out.append((f"set{i}", *_task_answers(rng, 400, k, sharp, skill), False))
    return out


def test_features_of_a_distribution() -> None:
    p = np.array([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    x = features(p, np.array([0.5, 1.0]))
    assert x.shape == (2, len(FEATURES))
    assert x[0, FEATURES.index("margin")] == pytest.approx(0.5)
    assert x[1, FEATURES.index("entropy_ratio")] == pytest.approx(1.0)
    assert x[0, FEATURES.index("log_label_mass")] == pytest.approx(np.log(0.5))
    assert x[0, FEATURES.index("log_answers")] == pytest.approx(np.log(3))


def test_a_fitted_map_is_calibrated_on_a_task_it_did_not_see() -> None:
    sets = _sets()
    held = sets[2]
    cal = fit_generic("m", SCORING, [s for s in sets if s is not held])
    _, probs, mass, right, yes_no = held
    conf = cal.confidence(probs, mass, yes_no)
    raw = probs.max(axis=1)
    assert metrics.calibration_error(conf, right) < metrics.calibration_error(raw, right)
    assert metrics.calibration_error(conf, right) < 0.1


def test_calibrate_keeps_the_top_answer_and_the_others_ratios() -> None:
    cal = fit_generic("m", SCORING, _sets())
    dist = LabelDistribution(("a", "b", "c"), (0.6, 0.3, 0.1), label_mass=0.8)
    out = cal.calibrate(dist)
    assert out.label == "a" and sum(out.probabilities) == pytest.approx(1.0)
    assert out.probabilities[1] / out.probabilities[2] == pytest.approx(3.0)
    assert out.label_mass == 0.8


def test_a_generic_calibration_round_trips_and_refuses_other_runs(tmp_path: Path) -> None:
    cal = fit_generic("m", SCORING, _sets())
    cal.save(tmp_path / "g.json")
    again = GenericCalibration.from_dict(json.loads((tmp_path / "g.json").read_text()))
    p = np.array([[0.5, 0.3, 0.2]])
    assert again.confidence(p, np.ones(1), False) == pytest.approx(
        cal.confidence(p, np.ones(1), False))
    assert again.id == cal.id
    assert cal.check("m", SCORING) is None
    assert "model 'm'" in (cal.check("other", SCORING) or "")
    assert "debias" in (cal.check("m", {**SCORING, "debias": False}) or "")
    bad = {**cal.to_dict(), "features": ["x"]}
    with pytest.raises(CalibrationError, match="another surelabel version"):
        GenericCalibration.from_dict(bad)


def test_yes_no_answers_get_their_own_map() -> None:
    rng = np.random.default_rng(1)
    labels = _sets()
    # Multilabel yes/no answers that are right half the time whatever they say.
    probs = rng.dirichlet([0.3, 0.3], 600)
    yes_no = [(f"ml{i}", probs, np.ones(600), rng.random(600) < 0.5, True) for i in range(2)]
    cal = fit_generic("m", SCORING, labels + yes_no)
    assert set(cal.maps) == {"labels", "yes_no"}
    sharp = np.array([[0.98, 0.02]])
    assert cal.confidence(sharp, np.ones(1), True)[0] == pytest.approx(0.5, abs=0.05)
    assert cal.confidence(sharp, np.ones(1), False)[0] > 0.8
    # Bound to a task: a binary true/false question is a choice between two labels.
    from surelabel.task import Task

    binary = Task.from_dict({"name": "t", "kind": "binary", "field": "ok",
                             "instructions": "Is it ok?"})
    multi = Task.from_dict({"name": "t", "kind": "multilabel", "field": "tags",
                            "instructions": "Tags.", "labels": ["a", "b"]})
    tf = LabelDistribution(("true", "false"), (0.98, 0.02), label_mass=1.0)
    assert cal.for_task(binary).calibrate(tf).probabilities[0] > 0.8
    assert cal.for_task(multi).calibrate(tf, "a").probabilities[0] == pytest.approx(0.5, abs=0.05)
    only_labels = fit_generic("m", SCORING, labels)
    assert only_labels.confidence(sharp, np.ones(1), True)[0] == pytest.approx(0.98)


def test_the_accept_gate_trusts_only_confidences_that_were_right_on_every_set() -> None:
    a = (np.full(20, 0.95), np.ones(20, dtype=bool))
    b = (np.r_[np.full(10, 0.95), np.full(30, 0.99)], np.r_[np.arange(10) < 5, np.ones(30)] > 0)
    assert accept_gate([a, b]) == pytest.approx(0.95)  # b's 0.95 answers were half wrong
    assert accept_gate([a]) == pytest.approx(0.9)
    # Three right answers are not enough evidence (two pseudo-failures count against them).
    assert accept_gate([(np.full(3, 0.97), np.ones(3, dtype=bool))]) == pytest.approx(0.97)
    lonely = (np.full(1, 0.99), np.zeros(1, dtype=bool))
    assert accept_gate([lonely]) == pytest.approx(0.99)


def test_below_the_gate_a_confidence_is_capped_at_the_accept_threshold() -> None:
    from surelabel.calibration.generic import LogisticMap

    n = len(FEATURES)
    logit = float(np.log(0.95 / 0.05))  # every answer gets 0.95: only the intercept
    x = np.zeros((1, n))
    closed = LogisticMap([0.0] * n + [logit], [0.0] * n, [1.0] * n, gate=0.97)
    assert closed(x)[0] == pytest.approx(0.9)
    assert LogisticMap(closed.coef, closed.mean, closed.scale, gate=0.93)(x)[0] == \
        pytest.approx(0.95)
    low = LogisticMap([0.0] * n + [0.0], closed.mean, closed.scale, gate=0.97)
    assert low(x)[0] == pytest.approx(0.5)  # below the cap: untouched


def test_no_generic_calibration_for_an_unknown_model() -> None:
    assert load_generic("no-such-model") is None
