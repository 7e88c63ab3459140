from __future__ import annotations

import math

import pytest

from surelabel.distribution import LabelDistribution, logsumexp
from surelabel.policy import decide, least_certain
from surelabel.task import Thresholds


def test_from_logprobs_normalizes_and_keeps_mass() -> None:
    logprobs = [math.log(0.4), math.log(0.2), math.log(0.1)]
    d = LabelDistribution.from_logprobs(["a", "b", "c"], logprobs)
    assert d.probabilities == pytest.approx((4 / 7, 2 / 7, 1 / 7))
    assert d.label_mass == pytest.approx(0.7)
    assert d.label == "a" and d.confidence == pytest.approx(4 / 7)
    assert d.margin == pytest.approx(2 / 7)
    assert d.entropy == pytest.approx(-sum(p * math.log(p) for p in (4 / 7, 2 / 7, 1 / 7)))


def test_ties_go_to_the_first_label() -> None:
    d = LabelDistribution(("x", "y"), (0.5, 0.5))
    assert d.label == "x" and d.margin == 0


def test_logsumexp_handles_minus_infinity() -> None:
    assert logsumexp([-math.inf, 0.0]) == 0.0
    assert logsumexp([-math.inf]) == -math.inf
    with pytest.raises(ValueError):
        LabelDistribution.from_logprobs(["a", "b"], [-math.inf, -math.inf])


@pytest.mark.parametrize(
    ("confidence", "expected"),
    [(0.95, "accept"), (0.9, "review"), (0.7, "review"), (0.5, "review"), (0.49, "clarify")],
)
def test_decisions_follow_thresholds(confidence: float, expected: str) -> None:
    assert decide(confidence, Thresholds()) == expected


def test_custom_thresholds_and_least_certain() -> None:
    t = Thresholds(accept=0.6, clarify=0.3)
    assert decide(0.61, t) == "accept" and decide(0.29, t) == "clarify"
    assert least_certain(["accept", "review", "accept"]) == "review"
    assert least_certain(["accept", "clarify", "review"]) == "clarify"


def test_chosen_label_wins_even_when_less_probable() -> None:
    # seed measured 0.3 for its generated answer "a"; the rest is spread over b and c.
    d = LabelDistribution(("a", "b", "c"), (0.3, 0.35, 0.35), chosen="a")
    assert d.label == "a" and d.confidence == 0.3
    assert d.margin == pytest.approx(-0.05)
    assert d.with_probabilities([0.5, 0.3, 0.2]).label == "a"
    with pytest.raises(ValueError, match="not one of the labels"):
        LabelDistribution(("a", "b"), (0.5, 0.5), chosen="z")
