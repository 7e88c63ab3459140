"""The multilabel mode of the exact method: sequential (each label after the answers fixed
for the labels before it) or independent (every label on its own, all in one round)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from surelabel import methods, prompt
from surelabel.backends.base import ScoreRequest, ScoreResult
from surelabel.backends.registry import BackendSpec
from surelabel.calibration import fit_calibration
from surelabel.calibration.file import Calibration
from surelabel.calibration.generic import GenericCalibration
from surelabel.classifier import Classifier
from surelabel.errors import BackendError, CalibrationError, InputError, UnsupportedMethodError
from surelabel.evaluate import from_predictions
from surelabel.io import Row
from surelabel.methods import MethodOptions
from surelabel.task import Task
from surelabel.testing import FakeBackend

TAGS = Task.from_dict({
    "name": "tags", "instructions": "Which topics does the text touch?", "kind": "multilabel",
    "field": "topics", "labels": {"food": "eating, cooking", "sport": "games, exercise",
                                  "money": "prices, paying"},
})
SINGLE = Task.from_dict({"name": "kind", "instructions": "What is it?",
                         "labels": ["fruit", "vegetable"]})
TEXTS = ["We cooked pasta after the football match.", "The ticket price went up again.",
         "A quiet evening at home."]
KEYWORDS = {"food": ["pasta", "cook"], "sport": ["football", "match"], "money": ["price"]}
INDEPENDENT = MethodOptions(multilabel_mode="independent", debias=False)
SEQUENTIAL = MethodOptions(multilabel_mode="sequential", debias=False)


class Counting:
    """A backend wrapper that counts ``score_batch`` calls and the requests in each."""

    def __init__(self, inner: Any, fail: str | None = None) -> None:
        self.inner = inner
        self.batches: list[list[ScoreRequest]] = []
        self.fail = fail

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult | Exception]:
        self.batches.append(list(requests))
        out = self.inner.score_batch(requests)
        if self.fail is not None:  # the requests of one text fail, as a too-long item would
            out = [BackendError("too long") if r.messages[-1].content == self.fail else res
                   for r, res in zip(requests, out)]
        return list(out)


# -- options ----------------------------------------------------------------------------


def test_options_validate_the_mode_and_name_the_bad_value() -> None:
    assert MethodOptions().multilabel_mode == methods.DEFAULT_MULTILABEL_MODE
    assert methods.DEFAULT_MULTILABEL_MODE in methods.MULTILABEL_MODES
    with pytest.raises(UnsupportedMethodError, match=r"'parallel'.*sequential, independent"):
        MethodOptions(multilabel_mode="parallel")


def test_scoring_key_has_the_mode_only_where_it_changes_the_scores() -> None:
    key = INDEPENDENT.scoring_key("exact", TAGS)
    assert key[methods.MULTILABEL_KEY] == "independent"
    assert SEQUENTIAL.scoring_key("exact", TAGS)[methods.MULTILABEL_KEY] == "sequential"
    # Not for a single-label task, nor for the methods that generate the whole answer.
    assert methods.MULTILABEL_KEY not in INDEPENDENT.scoring_key("exact", SINGLE)
    for method in ("seed", "topk", "sampling"):
        assert methods.MULTILABEL_KEY not in INDEPENDENT.scoring_key(method, TAGS)
    # Task-independent records (a generic calibration) carry it.
    assert INDEPENDENT.scoring_key("exact")[methods.MULTILABEL_KEY] == "independent"


# -- one round, and the right prefixes (fake backend) -----------------------------------


def test_independent_mode_makes_one_score_batch_call_with_plain_prefixes() -> None:
    backend = Counting(FakeBackend(keywords=KEYWORDS))
    results = methods.exact_batch(backend, TAGS, TEXTS, False, INDEPENDENT)
    assert len(backend.batches) == 1
    batch = backend.batches[0]
    assert len(batch) == len(TEXTS) * len(TAGS.subtasks)
    expected = [f'{{"topics": {{"{name}":' for name in TAGS.label_names]
    assert [r.prefix for r in batch] == expected * len(TEXTS)
    assert [r.messages[-1].content for r in batch] == [t for t in TEXTS for _ in expected]
    for r in results:
        assert isinstance(r, methods.MethodResult)
        assert r.names == TAGS.label_names
        assert r.info[methods.MULTILABEL_KEY] == "independent"


def test_sequential_mode_takes_a_round_per_label_and_writes_earlier_answers() -> None:
    backend = Counting(FakeBackend(keywords=KEYWORDS))
    results = methods.exact_batch(backend, TAGS, TEXTS, False, SEQUENTIAL)
    assert [len(b) for b in backend.batches] == [len(TEXTS)] * len(TAGS.subtasks)
    first = results[0]
    assert isinstance(first, methods.MethodResult)
    fixed = {name: d.label == "true" for name, d in zip(first.names, first.distributions)}
    last = backend.batches[-1][0].prefix
    assert last == ('{"topics": {' + f'"food": {json.dumps(fixed["food"])}, '
                    f'"sport": {json.dumps(fixed["sport"])}, "money":')
    assert first.info[methods.MULTILABEL_KEY] == "sequential"


def test_a_failing_item_gets_its_error_and_the_others_their_results() -> None:
    for options in (INDEPENDENT, SEQUENTIAL):
        backend = Counting(FakeBackend(keywords=KEYWORDS), fail=TEXTS[1])
        results = methods.exact_batch(backend, TAGS, TEXTS, False, options)
        assert isinstance(results[1], BackendError)
        plain = methods.exact_batch(FakeBackend(keywords=KEYWORDS), TAGS, TEXTS, False, options)
        for i in (0, 2):
            got, want = results[i], plain[i]
            assert isinstance(got, methods.MethodResult)
            assert isinstance(want, methods.MethodResult)
            assert got.distributions == want.distributions


def test_single_label_tasks_are_the_same_in_both_modes() -> None:
    backend = FakeBackend(keywords={"fruit": ["apple"], "vegetable": ["leek"]})
    a = methods.exact_batch(backend, SINGLE, ["apple", "leek"], False, INDEPENDENT)
    b = methods.exact_batch(backend, SINGLE, ["apple", "leek"], False, SEQUENTIAL)
    assert a == b
    assert all(methods.MULTILABEL_KEY not in r.info
               for r in a if isinstance(r, methods.MethodResult))


def test_the_debiasing_prior_is_cached_per_mode() -> None:
    backend = Counting(FakeBackend(keywords=KEYWORDS, prior=(0.7, 0.3)))
    for options in (INDEPENDENT, SEQUENTIAL, INDEPENDENT):
        methods.content_free_prior("exact", backend, TAGS, options)
    # independent: one round; sequential: one per label; the second independent: cached.
    assert len(backend.batches) == 1 + len(TAGS.subtasks)
    results = methods.run_batch("exact", backend, TAGS, TEXTS[:1], False,
                                MethodOptions(multilabel_mode="independent"))
    assert isinstance(results[0], methods.MethodResult)
    assert results[0].info["debiased"] is True
    assert results[0].info[methods.MULTILABEL_KEY] == "independent"


def test_permutation_averaging_works_in_independent_mode() -> None:
    backend = Counting(FakeBackend(keywords=KEYWORDS))
    options = MethodOptions(multilabel_mode="independent", permutations=2, debias=False)
    results = methods.run_batch("exact", backend, TAGS, TEXTS, False, options)
    assert len(backend.batches) == 2  # one round per label order
    for r in results:
        assert isinstance(r, methods.MethodResult)
        assert r.names == TAGS.label_names
        assert r.info["permutations"] == 2


# -- calibration files, generic maps, records ------------------------------------------


def _fitted(options: MethodOptions | None) -> Calibration:
    rng = np.random.default_rng(0)
    n = 60
    y = (rng.random((n, 3)) < 0.4).astype(int)
    x = np.zeros((n, 3, 2))
    x[:, :, 0] = np.log(np.clip(0.3 + 0.4 * y + rng.normal(0, 0.1, (n, 3)), 0.01, 0.99))
    x[:, :, 1] = np.log1p(-np.exp(x[:, :, 0]))
    scoring = None if options is None else options.scoring_key("exact", TAGS)
    calibration, _ = fit_calibration(TAGS, "m", x, y, method="temperature", scoring=scoring)
    return calibration


def test_a_calibration_file_refuses_scores_made_in_the_other_mode(tmp_path: Path) -> None:
    calibration = _fitted(INDEPENDENT)
    path = tmp_path / "cal.json"
    calibration.save(path)
    from surelabel.calibration.file import load

    loaded = load(path, TAGS, "m")
    assert loaded.scoring[methods.MULTILABEL_KEY] == "independent"
    loaded.check_scoring(INDEPENDENT.scoring_key("exact", TAGS))
    with pytest.raises(CalibrationError, match=r"multilabel_mode 'independent'.*"
                                               r"'sequential'.*--multilabel-mode"):
        loaded.check_scoring(SEQUENTIAL.scoring_key("exact", TAGS))


def test_an_old_calibration_file_without_the_mode_means_sequential(tmp_path: Path) -> None:
    data = _fitted(SEQUENTIAL).to_dict()
    del data["scoring"][methods.MULTILABEL_KEY]
    old = Calibration.from_dict(data)
    old.check_scoring(SEQUENTIAL.scoring_key("exact", TAGS))
    with pytest.raises(CalibrationError, match="multilabel_mode 'sequential'"):
        old.check_scoring(INDEPENDENT.scoring_key("exact", TAGS))


def test_the_classifier_refuses_a_calibration_of_the_other_mode() -> None:
    calibration = _fitted(SEQUENTIAL)
    calibration.model = "fake-model"
    with pytest.raises(CalibrationError, match="multilabel_mode"):
        Classifier(TAGS, FakeBackend(keywords=KEYWORDS), calibrator=calibration,
                   options=INDEPENDENT)
    ok = Classifier(TAGS, FakeBackend(keywords=KEYWORDS), calibrator=calibration,
                    options=SEQUENTIAL)
    assert ok.classify_one(TEXTS[0]).extra[methods.MULTILABEL_KEY] == "sequential"


def test_a_generic_map_checks_the_mode_only_for_multilabel_exact_runs() -> None:
    old = GenericCalibration(model="m", scoring={"prompt": "placeholder", "permutations": 1,
                                                 "debias": True}, maps={})
    new = GenericCalibration(model="m", scoring=MethodOptions(
        multilabel_mode="independent").scoring_key("exact"), maps={})
    for opts in (INDEPENDENT, SEQUENTIAL):
        single = MethodOptions(multilabel_mode=opts.multilabel_mode).scoring_key("exact", SINGLE)
        assert old.check("m", single) is None
        assert new.check("m", single) is None
    seq = MethodOptions(multilabel_mode="sequential").scoring_key("exact", TAGS)
    ind = MethodOptions(multilabel_mode="independent").scoring_key("exact", TAGS)
    assert old.check("m", seq) is None
    assert "multilabel_mode 'sequential'" in str(old.check("m", ind))
    assert new.check("m", ind) is None
    assert "multilabel_mode 'independent'" in str(new.check("m", seq))


def test_the_shipped_generic_map_follows_the_default_mode() -> None:
    from surelabel.calibration.generic import load_generic

    model = "SmolLM2-135M-Instruct.Q4_1"
    shipped = load_generic(model)
    assert shipped is not None
    assert shipped.scoring[methods.MULTILABEL_KEY] == methods.DEFAULT_MULTILABEL_MODE
    default = MethodOptions()
    # Single-label tasks take it whatever the mode; multilabel ones only in its mode.
    for mode in methods.MULTILABEL_MODES:
        opts = MethodOptions(multilabel_mode=mode)
        assert shipped.check(model, opts.scoring_key("exact", SINGLE)) is None
    assert shipped.check(model, default.scoring_key("exact", TAGS)) is None
    other = next(m for m in methods.MULTILABEL_MODES if m != default.multilabel_mode)
    why = shipped.check(model, MethodOptions(multilabel_mode=other).scoring_key("exact", TAGS))
    assert why is not None and other in why
    # The shipped file has the labels map only (a yes/no map fitted on independent scores
    # did worse on a left-out set than none): single-label tasks get it, multilabel ones
    # get no generic calibration, and are told why.
    assert set(shipped.maps) == {"labels"}
    backend = FakeBackend(keywords=KEYWORDS, model_name=model)
    clf = Classifier(SINGLE, backend)
    assert clf.calibration == "generic"
    assert isinstance(clf.calibrator, GenericCalibration)
    assert clf.calibrator.multilabel is False
    clf = Classifier(TAGS, FakeBackend(keywords=KEYWORDS, model_name=model))
    assert clf.calibration == "none"
    assert clf.generic_skipped == "it has no map for multilabel yes/no answers"
    backend = FakeBackend(keywords=KEYWORDS, model_name=model)
    clf = Classifier(TAGS, backend, options=MethodOptions(multilabel_mode=other))
    assert clf.calibration == "none"
    assert clf.generic_skipped is not None and other in clf.generic_skipped


def _records(path: Path, modes: Sequence[str | None]) -> list[Row]:
    rows = []
    with path.open("w") as fh:
        for i, mode in enumerate(modes):
            rec: dict[str, Any] = {"id": str(i), "text": "t", "method": "exact", "model": "m",
                                   "probabilities": {"food": 0.8, "sport": 0.1, "money": 0.3}}
            if mode is not None:
                rec[methods.MULTILABEL_KEY] = mode
            fh.write(json.dumps(rec) + "\n")
            rows.append(Row(id=str(i), text="t", line=i + 1, extra={}))
    return rows


def test_predictions_say_their_mode_and_may_not_mix_modes(tmp_path: Path) -> None:
    y = np.zeros((2, 3), dtype=int)
    path = tmp_path / "p.jsonl"
    rows = _records(path, ["independent", "independent"])
    scored = from_predictions(str(path), TAGS, rows, y)
    assert scored.scoring[methods.MULTILABEL_KEY] == "independent"
    rows = _records(path, [None, None])  # records from before the mode was recorded
    assert from_predictions(str(path), TAGS, rows, y).scoring[methods.MULTILABEL_KEY] == (
        "sequential")
    rows = _records(path, ["independent", None])
    with pytest.raises(InputError, match="mix multilabel_mode"):
        from_predictions(str(path), TAGS, rows, y)


def test_a_classifier_with_the_option_pickles() -> None:
    spec = BackendSpec("fake", {"keywords": KEYWORDS})
    clf = Classifier(TAGS, spec, options=MethodOptions(multilabel_mode="independent"))
    before = clf.classify_one(TEXTS[0])
    copy = pickle.loads(pickle.dumps(clf))
    assert copy.options.multilabel_mode == "independent"
    after = copy.classify_one(TEXTS[0])
    assert after.extra[methods.MULTILABEL_KEY] == "independent"
    assert after.probabilities == before.probabilities


# -- the real model ---------------------------------------------------------------------


@pytest.mark.model
def test_independent_gives_each_label_as_scored_alone(backend: Any) -> None:
    counting = Counting(backend)
    results = methods.exact_batch(counting, TAGS, TEXTS, False, INDEPENDENT)
    assert len(counting.batches) == 1
    for text, res in zip(TEXTS, results):
        assert isinstance(res, methods.MethodResult)
        messages = tuple(prompt.messages(TAGS, text))
        for sub, dist in zip(TAGS.subtasks, res.distributions):
            prefix, conts, closer = prompt.subtask_request(TAGS, sub, {})
            alone = backend.score(messages, prefix, conts, closer=closer)
            assert dist.logprobs is not None
            np.testing.assert_allclose(np.asarray(dist.logprobs, dtype=float),
                                       alone.logprobs, atol=1e-4)
    # The first label's prefix is the same in both modes; the later ones differ.
    sequential = methods.exact_batch(backend, TAGS, TEXTS, False, SEQUENTIAL)
    for a, b in zip(results, sequential):
        assert isinstance(a, methods.MethodResult) and isinstance(b, methods.MethodResult)
        assert a.distributions[0].logprobs is not None
        assert b.distributions[0].logprobs is not None
        np.testing.assert_allclose(np.asarray(a.distributions[0].logprobs, dtype=float),
                                   np.asarray(b.distributions[0].logprobs, dtype=float),
                                   atol=1e-4)


@pytest.mark.model
def test_cli_multilabel_mode_end_to_end(tmp_path: Path) -> None:
    task = tmp_path / "tags.yaml"
    task.write_text("name: tags\ninstructions: Which topics does the text touch?\n"
                    "kind: multilabel\nfield: topics\nlabels: [food, sport, money]\n")
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"id": i, "text": t}) + "\n"
                             for i, t in enumerate(TEXTS)))

    def classify(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "surelabel", "classify", str(task),
                               str(items), "--no-reason", "--quiet", "--calibration",
                               "none", "--no-debias", *flags],
                              capture_output=True, text=True, timeout=600, check=False)

    runs = {}
    for mode in ("independent", "sequential"):
        proc = classify("--multilabel-mode", mode)
        assert proc.returncode == 0, proc.stderr
        records = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        assert [r["id"] for r in records] == [0, 1, 2]
        assert all(r[methods.MULTILABEL_KEY] == mode for r in records)
        assert all(set(r["probabilities"]) == {"food", "sport", "money"} for r in records)
        runs[mode] = records
    # The first label is scored after the same prefix in both modes.
    for a, b in zip(runs["independent"], runs["sequential"]):
        assert a["probabilities"]["food"] == pytest.approx(b["probabilities"]["food"], abs=1e-3)
    bad = classify("--multilabel-mode", "parallel")
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "--multilabel-mode" in lines[0] and "parallel" in lines[0]
