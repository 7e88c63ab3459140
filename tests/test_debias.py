"""Label-free debiasing, label-order permutation averaging and prompt styles."""

from __future__ import annotations

import numpy as np
import pytest

from surelabel import methods, prompt
from surelabel.classifier import Classifier
from surelabel.debias import CONTENT_FREE_INPUTS, apply_prior, estimate_prior
from surelabel.distribution import LabelDistribution
from surelabel.methods import MethodOptions, label_orders
from surelabel.task import Task
from surelabel.testing import FakeBackend

TASK = Task.from_dict({"name": "t", "instructions": "Classify.", "field": "type",
                       "labels": ["fruit", "vegetable", "herb"]})
MULTI = Task.from_dict({"name": "m", "instructions": "Which apply?", "kind": "multilabel",
                        "field": "tags", "labels": ["a", "b"]})


def test_the_prior_is_divided_out_and_the_label_mass_kept() -> None:
    backend = FakeBackend(plan={"x": [0.5, 0.3, 0.2]}, prior=[0.7, 0.2, 0.1])
    raw = Classifier(TASK, backend, reason=False, calibrator="none",
                     options=MethodOptions(debias=False)).classify_one("x")
    deb = Classifier(TASK, backend, reason=False, calibrator="none").classify_one("x")
    assert "debiased" not in raw.extra and deb.extra["debiased"] is True
    expect = np.array([0.5, 0.3, 0.2]) / np.array([0.7, 0.2, 0.1])
    expect /= expect.sum()
    assert deb.probabilities is not None
    assert list(deb.probabilities.values()) == pytest.approx(expect.tolist(), abs=1e-6)
    assert deb.label == "herb" and raw.label == "fruit"
    assert deb.label_mass == raw.label_mass


def test_debiasing_is_on_for_exact_only_by_default_and_can_be_turned_off() -> None:
    assert MethodOptions().debias_for("exact") and not MethodOptions().debias_for("topk")
    assert not MethodOptions(debias=False).debias_for("exact")
    assert MethodOptions(debias=True).debias_for("sampling")


def test_the_prior_is_estimated_once_per_backend_task_and_options() -> None:
    backend = FakeBackend(plan={"x": [0.5, 0.3, 0.2]}, prior=[0.7, 0.2, 0.1])
    clf = Classifier(TASK, backend, reason=False)
    clf.classify_one("x")
    after_first = backend.calls
    assert after_first == 1 + len(CONTENT_FREE_INPUTS)
    clf.classify_batch([(1, "x"), (2, "x")])
    assert backend.calls == after_first + 2
    other = Classifier(TASK, backend, reason=False,
                       options=MethodOptions(prompt="listed")).classify_one("x")
    assert other.error is None and backend.calls > after_first + 3  # a new prompt: new prior


def test_a_multilabel_prior_is_per_label() -> None:
    backend = FakeBackend(keywords={"a": ["apple"]}, prior=[0.9, 0.1])
    record = Classifier(MULTI, backend, reason=False, calibrator="none").classify_one("apple")
    raw = Classifier(MULTI, backend, reason=False, calibrator="none",
                     options=MethodOptions(debias=False)).classify_one("apple")
    assert record.probabilities is not None and raw.probabilities is not None
    for label in ("a", "b"):  # a yes-prior of 0.9 divided out lowers every yes
        assert record.probabilities[label] < raw.probabilities[label]


def test_estimate_prior_floors_labels_the_model_never_gives() -> None:
    dists = [[LabelDistribution(("a", "b", "c"), (0.98, 0.02, 0.0))] for _ in range(3)]
    prior = estimate_prior(dists)[0]
    assert prior.sum() == pytest.approx(1.0) and prior[2] > 0
    out = apply_prior(LabelDistribution(("a", "b", "c"), (0.5, 0.25, 0.25)), prior)
    assert out.label == "c" and np.isfinite(out.probabilities).all()


def test_label_orders() -> None:
    assert label_orders(3, 1) == [(0, 1, 2)]
    assert label_orders(2, 3) == [(0, 1), (1, 0)]  # only two orders exist
    orders = label_orders(6, 3)
    assert orders[0] == tuple(range(6)) and orders[1] == tuple(reversed(range(6)))
    assert len(set(orders)) == 3 and all(sorted(o) == list(range(6)) for o in orders)


def test_permutation_averaging_is_the_mean_over_label_orders() -> None:
    backend = FakeBackend(keywords={"herb": ["basil"], "fruit": ["apple"]})
    opts = MethodOptions(permutations=2, debias=False)
    avg = methods.run_batch("exact", backend, TASK, ["basil apple"], False, opts)[0]
    assert isinstance(avg, methods.MethodResult) and avg.info["permutations"] == 2
    one = methods.run_batch("exact", backend, TASK, ["basil apple"], False,
                            MethodOptions(debias=False))[0]
    assert isinstance(one, methods.MethodResult)
    # The fake scores a label by its name, whatever the order: the average is the same.
    assert avg.distributions[0].probabilities == pytest.approx(
        one.distributions[0].probabilities, abs=1e-9)
    assert avg.distributions[0].labels == TASK.label_names


def test_the_placeholder_prompt_puts_no_label_where_the_answer_starts() -> None:
    placeholder = prompt.system_prompt(TASK, "placeholder")
    listed = prompt.system_prompt(TASK, "listed")
    assert '{"type": "<one of the labels above>"}' in placeholder
    assert '{"type": "fruit" or' in listed
    assert "- fruit" in placeholder and "- herb" in placeholder
    with pytest.raises(Exception, match="unknown prompt style"):
        MethodOptions(prompt="other")
