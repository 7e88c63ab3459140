"""The shortlist stage of exact scoring (``--shortlist K``): only the labels under the most
probable first tokens are scored, K tokens a round until the best scored label beats every
cut one's bound, on the real bundled model, held to the brute force; the bias debiasing
ranks by; the cut labels' estimate and bound; records, debiasing prior, backends that
cannot."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from surelabel import methods, prompt
from surelabel._numeric import log_softmax
from surelabel.backends._scoring import common_prefix_len, reference_score
from surelabel.backends.base import ScoreRequest, ScoreResult
from surelabel.backends.llamacpp import LlamaCppBackend
from surelabel.calibration import fit_calibration
from surelabel.calibration.file import Calibration
from surelabel.classifier import Classifier
from surelabel.distribution import LabelDistribution
from surelabel.errors import CalibrationError, UnsupportedMethodError
from surelabel.methods import MethodOptions
from surelabel.task import Task, load_task
from surelabel.testing import FakeBackend

ROOT = Path(__file__).resolve().parents[1]

# Ten labels; "vegetable" and "vegetarian" share their first token of their own.
DISHES = Task.from_dict({
    "name": "dishes",
    "instructions": "Classify the dish.",
    "field": "dish",
    "labels": ["vegetable", "vegetarian", "meat", "fish", "fruit", "dessert", "soup",
               "bread", "cheese", "rice"],
})
TEXTS = ["grilled tofu with rice", "beef stew", "a warm bowl of tomato broth"]


def _request(task: Task, text: str, k: int, bias: tuple[float, ...] = ()) -> ScoreRequest:
    return ScoreRequest(tuple(prompt.messages(task, text)), prompt.answer_prefix(task),
                        tuple(prompt.continuations(task)), prompt.closer(task), k, bias)


def _first_tokens(backend: LlamaCppBackend, req: ScoreRequest) -> tuple[float, list[int], Any]:
    """By a full forward pass (a reference independent of the trie): the log-probability
    of the start every answer's tail shares, each label's first token of its own, and
    the log-softmax after the shared tokens, where those are read."""
    context, tails, _ = backend.answer_split(req.messages, req.prefix, req.continuations)
    split = common_prefix_len(tails)
    shared = context + tails[0][:split]
    rows = log_softmax(np.asarray(backend.forward(shared), dtype=np.float64))
    start = sum(float(rows[len(context) - 1 + j][tails[0][j]]) for j in range(split))
    return start, [t[split] for t in tails], rows[-1]


def _check_rounds(backend: LlamaCppBackend, req: ScoreRequest, res: ScoreResult) -> list[int]:
    """Hold a shortlisted result to the brute force: the first tokens ranked by their
    probability plus the largest bias under them, the kept labels those under the first
    K, 2K, ... of them (a round that would be one trie node takes one token more) for the
    fewest rounds whose best scored label (plus its bias) beats every token left; the
    kept labels within 1e-4; the bound and the estimate of the cut mass. Returns the kept
    labels."""
    k = req.shortlist
    n = len(req.continuations)
    bias = req.shortlist_bias or (0.0,) * n
    start, own, lp = _first_tokens(backend, req)
    ref = reference_score(backend, req.messages, req.prefix, req.continuations,
                          closer=req.closer)
    top = {t: max(bias[i] for i in range(n) if own[i] == t) for t in set(own)}
    ranked = sorted(top, key=lambda t: -(lp[t] + top[t]))
    _, tails, _ = backend.answer_split(req.messages, req.prefix, req.continuations)
    split = common_prefix_len(tails)

    def nodes(tokens: list[int]) -> int:
        """Trie nodes below the shared start of the labels under ``tokens``."""
        return len({tuple(tails[i][:j]) for i in range(n) if own[i] in tokens
                    for j in range(split + 1, len(tails[i]) + 1)})

    m = 0
    while True:
        take = m + k
        # A round of a single node takes the next token too (no one-token decode call).
        while nodes(ranked[m:take]) < 2 and take < len(ranked):
            take += 1
        m = take
        if m >= len(ranked) or (max(ref[i] + bias[i] for i in range(n) if own[i] in ranked[:m])
                                >= start + lp[ranked[m]] + top[ranked[m]]):
            break
    kept = [i for i, t in enumerate(own) if t in ranked[:m]]
    assert sorted(set(range(n)) - set(res.cut)) == kept
    # The label the caller chooses (log-probability plus bias, every label scored) is kept.
    assert max(range(n), key=lambda i: ref[i] + bias[i]) in kept
    for i in kept:
        assert abs(math.exp(res.logprobs[i]) - math.exp(ref[i])) < 1e-4
    if not res.cut:
        return kept
    # The bound: the probability of the shared start times that of the cut tokens.
    assert res.cut_bound == pytest.approx(sum(math.exp(start + lp[t]) for t in ranked[m:]),
                                          rel=1e-3)
    # The estimate: the bound times the kept labels' share of the kept tokens.
    kept_first = sum(math.exp(start + lp[t]) for t in ranked[:m])
    share = sum(math.exp(res.logprobs[i]) for i in kept) / kept_first
    assert res.cut_mass == pytest.approx(res.cut_bound * min(1.0, share), rel=1e-3)
    assert res.cut_mass <= res.cut_bound
    assert sum(math.exp(res.logprobs[i]) for i in res.cut) == pytest.approx(res.cut_mass)
    return kept


@pytest.mark.model
def test_shortlist_scores_the_labels_under_the_top_first_tokens_exactly(
    backend: LlamaCppBackend,
) -> None:
    rounds, cut = set(), set()
    for k in (1, 3):
        reqs = [_request(DISHES, t, k) for t in TEXTS]
        for req, res in zip(reqs, backend.score_batch(reqs)):
            assert isinstance(res, ScoreResult), res
            kept = _check_rounds(backend, req, res)
            # "vegetable" and "vegetarian" share their token: kept or cut together.
            assert (0 in res.cut) == (1 in res.cut)
            rounds.add(len({t for i, t in enumerate(_first_tokens(backend, req)[1])
                            if i in kept}) > k)
            cut.add(bool(res.cut))
    assert rounds == {True, False}, "one round settles some items, others take more"
    assert True in cut, "some labels are cut"


@pytest.mark.model
def test_a_biased_shortlist_keeps_the_label_the_bias_favours(backend: LlamaCppBackend) -> None:
    """A bias (debiasing's minus log prior) ranks a label the model finds unlikely first,
    and the shortlist scores enough labels for the biased choice to be a scored one."""
    plain_req = _request(DISHES, TEXTS[1], 1)
    _, own, lp = _first_tokens(backend, plain_req)
    last = min(range(10), key=lambda i: lp[own[i]])  # the least probable first token
    bias = tuple(float(lp.max() - lp[own[last]] + 5.0) if i == last else 0.0
                 for i in range(10))
    req = _request(DISHES, TEXTS[1], 1, bias)
    # One call each: requests with the same messages and context are one trie, scored whole.
    plain, res = backend.score_batch([plain_req])[0], backend.score_batch([req])[0]
    assert isinstance(res, ScoreResult) and isinstance(plain, ScoreResult)
    assert last in plain.cut and last not in res.cut
    _check_rounds(backend, plain_req, plain)
    _check_rounds(backend, req, res)
    with pytest.raises(ValueError, match="one entry per continuation"):
        backend.score_batch([_request(DISHES, TEXTS[1], 1, (1.0,))])


@pytest.mark.model
def test_a_shortlist_that_covers_every_label_changes_nothing(backend: LlamaCppBackend) -> None:
    """K at least the number of distinct first tokens: the plain trie, result for result;
    and shortlisted and plain requests mixed in one batch each stay themselves."""
    plain = backend.score_batch([_request(DISHES, t, 0) for t in TEXTS])
    wide = backend.score_batch([_request(DISHES, t, 9) for t in TEXTS])
    for a, b in zip(plain, wide):
        assert isinstance(a, ScoreResult) and isinstance(b, ScoreResult)
        assert b.cut == () and b.cut_mass == 0.0
        assert a.logprobs == b.logprobs
    mixed = backend.score_batch([_request(DISHES, TEXTS[0], 2), _request(DISHES, TEXTS[1], 0)])
    alone = backend.score_batch([_request(DISHES, TEXTS[0], 2)])[0]
    assert isinstance(mixed[0], ScoreResult) and isinstance(alone, ScoreResult)
    assert mixed[0].cut == alone.cut
    for x, y in zip(mixed[0].logprobs, alone.logprobs):
        assert abs(math.exp(x) - math.exp(y)) < 1e-4
    assert isinstance(mixed[1], ScoreResult) and mixed[1].cut == ()
    assert isinstance(plain[1], ScoreResult)
    for x, y in zip(mixed[1].logprobs, plain[1].logprobs):
        assert abs(math.exp(x) - math.exp(y)) < 1e-4


@pytest.mark.model
def test_records_say_how_the_shortlist_scored(backend: LlamaCppBackend) -> None:
    clf = Classifier(DISHES, backend, reason=False, options=MethodOptions(shortlist=2))
    full = Classifier(DISHES, backend, reason=False)
    for rec, ref in zip(clf.classify_many(TEXTS, progress=False),
                        full.classify_many(TEXTS, progress=False)):
        assert rec.error is None, rec.error
        out = rec.to_dict()
        assert out["shortlist"] == 2
        assert 2 <= out["labels_scored"] < 10
        assert 0 < out["cut_mass"] <= out["cut_bound"]
        assert sum(rec.probabilities.values()) == pytest.approx(1.0)  # type: ignore[union-attr]
        assert out["debiased"] is True
        # Ranked and settled as debiasing chooses: the label of every label scored.
        assert rec.label == ref.label
    # The debiasing prior is estimated with every label scored: one prior for both runs.
    plain = MethodOptions()
    assert (methods.content_free_prior("exact", backend, DISHES, MethodOptions(shortlist=2))
            is methods.content_free_prior("exact", backend, DISHES, plain))


@pytest.mark.model
@pytest.mark.slow
def test_shortlist_at_150_labels_against_the_exact_streams(backend: LlamaCppBackend) -> None:
    """clinc150's 150 intents with K = 16: the kept labels within 1e-4 of the streams
    scorer (bit for bit the brute force), the most probable label among them, and the
    estimate of the cut mass within its bound; debiased, the label of exact scoring."""
    task = load_task(ROOT / "bench" / "tasks" / "clinc150.yaml")
    texts = ["how do i say thank you in french", "what is my bank balance",
             "set an alarm for 7 am"]
    streams = LlamaCppBackend(scorer="streams")
    try:
        exact = streams.score_batch([_request(task, t, 0) for t in texts])
    finally:
        streams.close()
    short = backend.score_batch([_request(task, t, 16) for t in texts])
    for a, b in zip(exact, short):
        assert isinstance(a, ScoreResult) and isinstance(b, ScoreResult)
        kept = [i for i in range(150) if i not in set(b.cut)]
        assert 16 <= len(kept) < 150
        assert max(abs(math.exp(a.logprobs[i]) - math.exp(b.logprobs[i])) for i in kept) < 1e-4
        assert max(range(150), key=a.logprobs.__getitem__) in kept
        assert 0 < b.cut_mass <= b.cut_bound
    # Debiased and calibrated, as users run it: the label of every label scored.
    short_clf = Classifier(task, backend, reason=False, options=MethodOptions(shortlist=16))
    full_clf = Classifier(task, backend, reason=False)
    for x, y in zip(short_clf.classify_many(texts, progress=False),
                    full_clf.classify_many(texts, progress=False)):
        assert x.error is None and x.label == y.label


def test_backends_that_cannot_shortlist_score_every_label_and_say_so() -> None:
    fake = FakeBackend(keywords={"meat": ["beef"]})
    clf = Classifier(DISHES, fake, reason=False, options=MethodOptions(shortlist=2))
    rec = clf.classify_one("beef stew")
    assert rec.error is None
    assert rec.extra["labels_scored"] == 10 and rec.extra["cut_mass"] == 0.0
    assert rec.warning is not None and "no shortlist" in rec.warning


def test_cut_labels_are_unseen_and_never_chosen_over_a_scored_one() -> None:
    names = ["a", "b", "c", "d"]
    d = LabelDistribution.from_logprobs(names, [-1.0, -2.0, -3.0, -3.5], bounded=[2, 3])
    assert d.unseen == ("c", "d") and d.logprobs is not None
    assert d.logprobs[2] is None and d.logprobs[0] == -1.0
    assert d.label == "a" and d.chosen is None
    # A cut label's share beats every scored label: the best scored one is chosen.
    d = LabelDistribution.from_logprobs(names, [-3.0, -2.0, -1.0, -3.5], bounded=[2])
    assert d.label == "b" and d.chosen == "b"
    assert sum(d.probabilities) == pytest.approx(1.0)


def test_shortlist_is_part_of_the_scoring_key() -> None:
    single = Task.from_dict({"name": "t", "instructions": "x", "labels": ["a", "b", "c"]})
    assert MethodOptions(shortlist=8).scoring_key("exact", single)["shortlist"] == 8
    assert MethodOptions().scoring_key("exact", single)["shortlist"] == 0
    assert "shortlist" not in MethodOptions(shortlist=8).scoring_key("seed", single)
    # A calibration file from before the shortlist was recorded was fitted without one.
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    x = np.log(np.full((60, 3), 0.2) + 0.6 * np.eye(3)[y])
    calibration, _ = fit_calibration(single, "m", x, y, method="temperature")
    data = calibration.to_dict()
    data["scoring"].pop("shortlist", None)
    old = Calibration.from_dict(data)
    old.check_scoring(MethodOptions().scoring_key("exact", single))
    with pytest.raises(CalibrationError, match=r"shortlist 0.*--shortlist"):
        old.check_scoring(MethodOptions(shortlist=8).scoring_key("exact", single))
    with pytest.raises(UnsupportedMethodError, match="shortlist"):
        MethodOptions(shortlist=-1)


def test_a_negative_shortlist_flag_exits_2_with_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "surelabel", "classify", str(ROOT / "examples" / "pineapple.yaml"),
         "-", "--shortlist", "-1"],
        input="", capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "shortlist" in lines[0], proc.stderr
