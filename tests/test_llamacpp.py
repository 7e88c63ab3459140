"""Exact scoring on the real bundled model, checked against a brute-force computation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from surelabel import prompt
from surelabel.backends._scoring import reference_score
from surelabel.backends.llamacpp import LlamaCppBackend
from surelabel.classifier import Classifier
from surelabel.distribution import LabelDistribution
from surelabel.errors import ModelLoadError
from surelabel.task import Task, load_task

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

pytestmark = pytest.mark.model

# Labels that share first tokens (" \"", "veget") and labels of several tokens.
SHARED = Task.from_dict(
    {
        "name": "shared",
        "instructions": "Classify the diet of the dish.",
        "field": "diet",
        "labels": ["vegetable", "vegetarian", "vegan", "meat"],
    }
)


def _check_against_bruteforce(backend: LlamaCppBackend, task: Task, texts: list[str]) -> None:
    pre, conts, close = prompt.answer_prefix(task), prompt.continuations(task), prompt.closer(task)
    for text in texts:
        msgs = prompt.messages(task, text)
        fast = backend.score(msgs, pre, conts, closer=close).logprobs
        slow = reference_score(backend, msgs, pre, conts, closer=close)
        fast_d = LabelDistribution.from_logprobs(task.label_names, fast)
        slow_d = LabelDistribution.from_logprobs(task.label_names, slow)
        for a, b in zip(fast_d.probabilities, slow_d.probabilities):
            assert abs(a - b) < 1e-4, (text, fast_d, slow_d)
        for a, b in zip(fast, slow):
            assert abs(math.exp(a) - math.exp(b)) < 1e-4


def test_labels_really_are_multi_token_and_share_prefixes(backend: LlamaCppBackend) -> None:
    tails = [backend.tokenize(prompt.answer_prefix(SHARED) + c)
             for c in prompt.continuations(SHARED)]
    assert all(len(t) >= 5 for t in tails)  # '{"', 'diet', '":', ' "', label pieces...
    veg, vegetarian = tails[0], tails[1]
    assert veg[:5] == vegetarian[:5], "vegetable/vegetarian should share their first label token"


def test_exact_equals_bruteforce_multiclass(backend: LlamaCppBackend) -> None:
    task = load_task(EXAMPLES / "fruit_veg_herb.yaml")
    _check_against_bruteforce(backend, task, ["tomato", "basil", "a ripe mango", "tomato"])


def test_exact_equals_bruteforce_shared_prefix_labels(backend: LlamaCppBackend) -> None:
    _check_against_bruteforce(backend, SHARED, ["grilled tofu with rice", "beef stew", "carrot"])


def test_exact_equals_bruteforce_boolean(backend: LlamaCppBackend) -> None:
    task = load_task(EXAMPLES / "pineapple.yaml")
    _check_against_bruteforce(backend, task, ["Hawaiian pizza", "cheese pizza"])


def test_distribution_properties_and_decisions(backend: LlamaCppBackend) -> None:
    task = load_task(EXAMPLES / "fruit_veg_herb.yaml")
    clf = Classifier(task, backend, reason=False)
    assert clf.method == "exact"
    for text in ["tomato", "mint", "strawberry"]:
        rec = clf.classify_one(text, text).to_dict()
        probs = rec["probabilities"]
        assert set(probs) == {"fruit", "vegetable", "herb"}
        assert abs(sum(probs.values()) - 1) < 1e-5
        assert 0 < rec["label_mass"] <= 1
        assert rec["label"] == max(probs, key=probs.get)
        assert rec["confidence"] == pytest.approx(max(probs.values()), abs=1e-6)
        ordered = sorted(probs.values(), reverse=True)
        assert rec["margin"] == pytest.approx(ordered[0] - ordered[1], abs=1e-5)
        assert rec["entropy"] == pytest.approx(-sum(p * math.log(p) for p in ordered), abs=1e-5)
        c = rec["confidence"]
        expected = "accept" if c > 0.9 else ("clarify" if c < 0.5 else "review")
        assert rec["decision"] == expected


def test_reason_is_generated_after_the_label_and_never_moves_it(backend: LlamaCppBackend) -> None:
    task = load_task(EXAMPLES / "fruit_veg_herb.yaml")
    with_reason = Classifier(task, backend).classify_one("basil").to_dict()
    without = Classifier(task, backend, reason=False).classify_one("basil").to_dict()
    assert with_reason["probabilities"] == without["probabilities"]
    assert isinstance(with_reason["reason"], str) and with_reason["reason"]
    assert len(with_reason["reason"].split()) <= prompt.REASON_MAX_WORDS
    assert without["reason"] is None


def test_multilabel_gives_independent_yes_probabilities(backend: LlamaCppBackend) -> None:
    task = Task.from_dict(
        {"name": "emo", "instructions": "Which emotions does the text express?",
         "kind": "multilabel", "field": "emotions", "labels": ["joy", "anger", "fear"]}
    )
    rec = Classifier(task, backend, reason=False).classify_one("I am so happy today!").to_dict()
    assert set(rec["probabilities"]) == {"joy", "anger", "fear"}
    assert all(0 < p < 1 for p in rec["probabilities"].values())
    assert rec["labels"] == [k for k, p in rec["probabilities"].items() if p >= 0.5]
    assert set(rec["decisions"]) == {"joy", "anger", "fear"}
    order = {"clarify": 0, "review": 1, "accept": 2}
    assert rec["decision"] == min(rec["decisions"].values(), key=order.get)


def test_seed_method_reads_first_value_token(backend: LlamaCppBackend) -> None:
    task = load_task(EXAMPLES / "fruit_veg_herb.yaml")
    rec = Classifier(task, backend, method="seed", reason=False).classify_one("lemon").to_dict()
    assert rec["method"] == "seed" and rec["error"] is None
    assert rec["label"] in task.label_names
    assert 0 < rec["confidence"] <= 1
    assert abs(sum(rec["probabilities"].values()) - 1) < 1e-5


def test_bad_items_become_error_records(backend: LlamaCppBackend) -> None:
    task = load_task(EXAMPLES / "fruit_veg_herb.yaml")
    clf = Classifier(task, backend, reason=False)
    assert clf.classify_one("  \n\t ").error == "empty text"
    assert clf.classify_one(None).error == "text must be a string, got NoneType"
    assert "not valid Unicode" in (clf.classify_one("\ud800 lone surrogate").error or "")
    assert clf.classify_one("tomato").error is None


def test_long_text_is_truncated_from_the_middle_with_a_warning() -> None:
    small = LlamaCppBackend(n_ctx=512)
    try:
        task = load_task(EXAMPLES / "fruit_veg_herb.yaml")
        text = "start " + "filler words " * 400 + "basil at the end"
        rec = Classifier(task, small, reason=False).classify_one(text).to_dict()
        assert rec["error"] is None and "truncated from the middle" in rec["warning"]
        assert abs(sum(rec["probabilities"].values()) - 1) < 1e-5
    finally:
        small.close()


def test_missing_and_corrupt_model_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelLoadError, match="not found"):
        LlamaCppBackend(tmp_path / "nope.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        LlamaCppBackend(bad)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="cannot load"):
        LlamaCppBackend(truncated)
