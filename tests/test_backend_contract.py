"""The contract every registered backend passes (in the manner of scikit-learn's
``parametrize_with_checks``).

Every name in the ``surelabel.backends`` entry-point group must have a case in
:data:`CASES` (a factory for a ready instance): a backend that registers without joining
the suite fails :func:`test_every_registered_backend_has_a_contract_case`. The checks
depend only on what a backend declares in its capabilities.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from surelabel import prompt
from surelabel.backends import Backend, BackendSpec, Capabilities, ScoreRequest, ScoreResult
from surelabel.backends.base import Generation
from surelabel.classifier import Classifier
from surelabel.errors import UnsupportedMethodError
from surelabel.methods import resolve
from surelabel.task import Task, load_task
from surelabel.testing import FakeBackend

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TASK = load_task(EXAMPLES / "fruit_veg_herb.yaml")
MULTI = Task.from_dict({"name": "tags", "instructions": "Which apply?", "kind": "multilabel",
                        "field": "tags", "labels": ["sweet", "green", "leafy"]})


def _fake(request: pytest.FixtureRequest) -> Backend:
    return FakeBackend(keywords={"fruit": ["mango"], "herb": ["basil"]})


def _llamacpp(request: pytest.FixtureRequest) -> Backend:
    backend: Backend = request.getfixturevalue("backend")  # the session's loaded model
    return backend


def _transformers(request: pytest.FixtureRequest) -> Backend:
    backend: Backend = request.getfixturevalue("transformers_backend")  # the bundled GGUF
    return backend


#: Registered name -> how to get a ready instance for the checks.
CASES: dict[str, Callable[[pytest.FixtureRequest], Backend]] = {
    "fake": _fake,
    "llamacpp": _llamacpp,
    "transformers": _transformers,
}
#: Cases that load the real model (the ``model`` marker).
REAL = {"llamacpp", "transformers"}
#: Registered backends whose contract runs elsewhere, with the reason (a real server).
ELSEWHERE = {"openai": "tests/test_openai_server.py::test_openai_backend_contract"}


def _params() -> list[Any]:
    return [pytest.param(name, marks=[pytest.mark.model] if name in REAL else [])
            for name in sorted(CASES)]


@pytest.fixture(params=_params())
def case(request: pytest.FixtureRequest) -> tuple[str, Backend]:
    return request.param, CASES[request.param](request)


def test_every_registered_backend_has_a_contract_case() -> None:
    registered = {ep.name for ep in importlib.metadata.entry_points(group="surelabel.backends")}
    assert {"fake", "llamacpp", "openai"} <= registered
    missing = registered - set(CASES) - set(ELSEWHERE)
    assert not missing, f"registered backends without a contract case: {sorted(missing)}"


def check_backend(name: str, backend: Backend) -> None:
    """Every check of the contract, for one ready backend (reused by other test files)."""
    assert isinstance(backend, Backend)
    caps = backend.capabilities
    assert isinstance(caps, Capabilities)
    assert caps.concurrency >= 1
    assert isinstance(backend.model_name, str) and backend.model_name
    msgs = prompt.messages(TASK, "a ripe mango")
    pre, conts, closer = prompt.answer_prefix(TASK), prompt.continuations(TASK), prompt.closer(TASK)

    if caps.exact_scoring:
        result = backend.score(msgs, pre, conts, closer=closer)
        assert isinstance(result, ScoreResult) and len(result.logprobs) == len(conts)
        assert all(math.isfinite(v) and v <= 1e-6 for v in result.logprobs)
        # The labels' complete answers exclude each other: their probabilities sum to <= 1.
        assert sum(math.exp(v) for v in result.logprobs) <= 1 + 1e-6
        other = prompt.messages(TASK, "fresh basil leaves")
        requests = [ScoreRequest(tuple(m), pre, tuple(conts), closer) for m in (msgs, other)]
        batch = backend.score_batch(requests)
        assert len(batch) == 2 and all(isinstance(r, ScoreResult) for r in batch)
        again = backend.score(other, pre, conts, closer=closer)
        first = batch[0]
        second = batch[1]
        assert isinstance(first, ScoreResult) and isinstance(second, ScoreResult)
        for a, b in zip(first.logprobs, result.logprobs):
            assert a == pytest.approx(b, abs=1e-4)
        for a, b in zip(second.logprobs, again.logprobs):
            assert a == pytest.approx(b, abs=1e-4)
        assert backend.score_batch([]) == []
    else:
        with pytest.raises(UnsupportedMethodError):
            backend.score(msgs, pre, conts, closer=closer)

    schema = prompt.json_schema(TASK)
    if caps.json_schema:
        gen = backend.generate(msgs, schema=schema, max_tokens=48,
                               top_logprobs=min(3, caps.max_top_logprobs))
        assert isinstance(gen, Generation)
        answer = json.loads(gen.text)
        assert answer[TASK.field] in TASK.label_names
        if caps.logprobs:
            assert gen.tokens and all(math.isfinite(t.logprob) for t in gen.tokens)
            assert all(len(t.top) <= 3 for t in gen.tokens)
            assert b"".join(t.token for t in gen.tokens).decode("utf-8", "replace") == gen.text
    if caps.assistant_prefix:
        reason = backend.generate(msgs, prefix=prompt.reason_prefix(TASK, "fruit"),
                                  max_tokens=8, stop=['"'])
        assert isinstance(reason.text, str) and '"' not in reason.text
    if caps.sampling:
        samples = backend.sample(msgs, n=3, temperature=0.7, schema=schema, max_tokens=48)
        assert len(samples) == 3 and all(isinstance(g, Generation) for g in samples)
    else:
        with pytest.raises(UnsupportedMethodError):
            backend.sample(msgs, n=2, temperature=0.7, schema=schema, max_tokens=16)

    # Every label set kind gets a record through the auto method.
    for task in (TASK, MULTI):
        record = Classifier(task, backend, reason=False).classify_one("fresh basil", "x")
        assert record.error is None, record.error
        assert record.method == resolve("auto", caps)
        assert record.probabilities and all(0 <= p <= 1 for p in record.probabilities.values())
        if task.kind != "multilabel":
            assert sum(record.probabilities.values()) == pytest.approx(1.0, abs=1e-5)

    # A backend with a spec names itself by its registered name, and pickles as that spec.
    spec = backend.spec
    if spec is not None:
        assert isinstance(spec, BackendSpec) and spec.name == name
        assert BackendSpec.parse(str(spec)) == spec
        assert pickle.loads(pickle.dumps(spec)) == spec


def test_backend_contract(case: tuple[str, Backend]) -> None:
    check_backend(*case)


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.model] if n in REAL else [])
                                  for n in sorted(CASES)])
def test_a_backend_built_from_its_spec_pickles_and_closes_twice(
    name: str, request: pytest.FixtureRequest
) -> None:
    spec = CASES[name](request).spec
    assert spec is not None, f"{name}: built from plain options, it should have a spec"
    fresh = spec.build()
    try:
        clone = pickle.loads(pickle.dumps(fresh))
        assert type(clone) is type(fresh) and clone.spec == fresh.spec
        msgs = prompt.messages(TASK, "mint")
        if fresh.capabilities.exact_scoring:
            args = (prompt.answer_prefix(TASK), prompt.continuations(TASK))
            a = fresh.score(msgs, *args, closer=prompt.closer(TASK)).logprobs
            b = clone.score(msgs, *args, closer=prompt.closer(TASK)).logprobs
            assert a == pytest.approx(b, abs=1e-6)
        clone.close()
        clone.close()
    finally:
        fresh.close()
        fresh.close()


def test_a_backend_without_a_spec_refuses_to_pickle_with_a_clear_message() -> None:
    backend = FakeBackend(generation=Generation(text="{}"))
    assert backend.spec is None
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(backend)
