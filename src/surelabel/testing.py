"""Test helpers shipped with surelabel: a fast, deterministic fake backend.

:class:`FakeBackend` implements the whole :class:`~surelabel.backends.base.Backend`
protocol without a model, so tests of pipelines, the CLI, the service or a user's own
integration run in milliseconds. It is registered as the ``fake`` backend::

    surelabel classify task.yaml items.jsonl --backend fake
    Classifier(task, BackendSpec("fake", {"keywords": {"fruit": ["apple"]}}))

A label's score for a text (its log-probability before normalising) comes from, in order
of precedence:

- ``logprobs``: fixed values, one per label position, whatever the text;
- ``plan``: probabilities per exact text (``default`` for texts not in it);
- ``keywords``: ``weight`` times the number of the label's keywords found in the text,
  plus a fixed pseudo-random offset in ``[0, noise)`` per (label, text), so some answers
  are wrong and every run gives the same numbers.

Generation answers the JSON the schema asks for with the most probable label, and reports
every label as a top-k alternative of the value's token, so the ``seed`` and ``topk``
methods work; ``sample`` draws answers from the same scores (seeded by the text).
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from surelabel._numeric import log_softmax
from surelabel.backends import registry
from surelabel.backends.base import (
    SAMPLING_TEMPERATURE,
    Backend,
    BaseBackend,
    Capabilities,
    Generation,
    ScoreResult,
    TokenLogprob,
)
from surelabel.debias import CONTENT_FREE_INPUTS
from surelabel.prompt import Message

__all__ = ["FakeBackend", "registered"]

_PRESETS = ("exact", "topk", "sampling", "none")


class FakeBackend(BaseBackend):
    """A deterministic backend with no model (see the module docstring).

    Parameters
    ----------
    model_name:
        Reported as the model.
    keywords:
        Label name -> words that speak for it.
    weight, noise:
        Keyword weight and the range of the per-(label, text) offset.
    logprobs:
        Fixed label log-probabilities by position (overrides everything else).
    plan, default:
        Probabilities per text, by label position; ``default`` for other texts.
    reason:
        The reason text generated after a chosen label.
    capabilities:
        ``"exact"`` (teacher forcing, top-k, sampling), ``"topk"`` (an API with logprobs),
        ``"sampling"`` (an API without logprobs), ``"none"``, or a mapping of
        :class:`~surelabel.backends.base.Capabilities` fields.
    top_logprobs, concurrency:
        Alternatives reported per generated token, and the declared concurrency.
    prior:
        The distribution (by label position) of content-free inputs (those of
        :mod:`surelabel.debias`); default uniform, so debiasing changes nothing.
    delay:
        Seconds every ``score``, ``generate`` and ``sample`` call sleeps first (an API's
        latency, or a slow model, in tests of concurrency and scale-out).
    generation:
        A fixed :class:`~surelabel.backends.base.Generation` returned by every
        ``generate`` call (tests of answer parsing). Not plain data: such a backend has no
        spec and does not pickle.
    """

    name = "fake"
    __test__ = False  # not a pytest test class, despite the module it is imported into

    def __init__(
        self,
        *,
        model_name: str = "fake-model",
        keywords: Mapping[str, Sequence[str]] | None = None,
        weight: float = 3.0,
        noise: float = 2.5,
        logprobs: Sequence[float] | None = None,
        plan: Mapping[str, Sequence[float]] | None = None,
        default: Sequence[float] = (0.6, 0.3, 0.1),
        reason: str = "it grows on trees",
        capabilities: str | Mapping[str, Any] = "exact",
        top_logprobs: int = 20,
        concurrency: int = 1,
        generation: Generation | None = None,
        delay: float = 0.0,
        prior: Sequence[float] | None = None,
    ) -> None:
        if isinstance(capabilities, str) and capabilities not in _PRESETS:
            raise ValueError(f"capabilities: expected one of {', '.join(_PRESETS)} or a mapping")
        #: Reported as the model (a plain attribute: tests may change it).
        self.model_name = model_name
        self.keywords = {k: tuple(v) for k, v in (keywords or {}).items()}
        self.weight = float(weight)
        self.noise = float(noise)
        self.fixed = None if logprobs is None else [float(v) for v in logprobs]
        self.plan = {k: [float(p) for p in v] for k, v in (plan or {}).items()}
        self.default = [float(p) for p in default]
        self.reason = reason
        self._caps = _capabilities(capabilities, top_logprobs, concurrency)
        self.generation = generation
        self.delay = float(delay)
        self.prior = None if prior is None else [float(p) for p in prior]
        #: Calls of ``score`` so far (tests count model work with it).
        self.calls = 0
        #: Set whenever ``score`` is entered; ``hold()`` makes it wait for ``release()``.
        self.entered = threading.Event()
        self._gate = threading.Event()
        self._gate.set()
        self._lock = threading.Lock()
        if generation is None:
            self._remember(
                model_name=model_name, keywords=keywords, weight=weight, noise=noise,
                logprobs=logprobs, plan=plan, default=default, reason=reason,
                capabilities=capabilities, top_logprobs=top_logprobs, concurrency=concurrency,
                **({"delay": delay} if delay else {}),
                **({"prior": prior} if prior is not None else {}),
            )

    # -- test controls ------------------------------------------------------------------

    def hold(self) -> None:
        """Make ``score`` calls wait (up to 30 s) until :meth:`release`."""
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    # -- the Backend protocol -----------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    def label_logprobs(self, text: str, labels: Sequence[str]) -> list[float]:
        """The scores of ``labels`` for ``text`` (log-probabilities of complete answers)."""
        if text in CONTENT_FREE_INPUTS:
            return self._prior_logprobs(len(labels))
        if self.fixed is not None:
            values = self.fixed[: len(labels)]
            return values + [-10.0] * (len(labels) - len(values))
        if self.plan or not self.keywords:
            probs = list(self.plan.get(text, self.default))[: len(labels)]
            probs += [1e-3] * (len(labels) - len(probs))
            return [math.log(p) for p in probs]
        low = text.lower()
        raw = [self._keyword_score(label, low) for label in labels]
        return [float(v) for v in log_softmax(np.array(raw))]

    def _prior_logprobs(self, k: int) -> list[float]:
        """What a content-free input gets: ``prior`` (by label position), else uniform, so
        that debiasing changes nothing unless a test asks for a prior."""
        if self.prior is None:
            return [-math.log(k)] * k
        probs = list(self.prior)[:k] + [1e-3] * max(0, k - len(self.prior))
        return [math.log(p) for p in probs]

    def _keyword_score(self, label: str, low_text: str) -> float:
        hits = sum(word in low_text for word in self.keywords.get(label, ()))
        offset = (zlib.crc32(f"{label}|{low_text}".encode()) % 1000) / 1000 * self.noise
        return self.weight * hits + offset

    def score(
        self,
        messages: Sequence[Message],
        prefix: str,
        continuations: Sequence[str],
        *,
        closer: str = "",
    ) -> ScoreResult:
        with self._lock:
            self.calls += 1
        self.entered.set()
        self._gate.wait(timeout=30)
        if self.delay:
            time.sleep(self.delay)
        if not continuations:
            raise ValueError("score: no continuations")
        text = messages[-1].content
        subject = _multilabel_subject(prefix, continuations)
        if subject is not None:
            return ScoreResult(tuple(self._yes_no(text, subject)))
        labels = [_continuation_label(c, closer) for c in continuations]
        return ScoreResult(tuple(self.label_logprobs(text, labels)))

    def _yes_no(self, text: str, label: str) -> list[float]:
        """(true, false) log-probabilities of one label of a multilabel answer."""
        if text in CONTENT_FREE_INPUTS:
            return self._prior_logprobs(2)
        if self.fixed is not None or self.plan or not self.keywords:
            # Position-free modes: the label's probability of applying is its share of a
            # plan/fixed distribution over (true, false).
            return self.label_logprobs(text, ["true", "false"])
        low = text.lower()
        yes = self._keyword_score(label, low)
        no = (self.weight + self.noise) / 2
        return [float(v) for v in log_softmax(np.array([yes, no]))]

    def generate(
        self,
        messages: Sequence[Message],
        *,
        prefix: str = "",
        schema: dict[str, Any] | None = None,
        max_tokens: int = 64,
        stop: Sequence[str] = (),
        top_logprobs: int = 0,
    ) -> Generation:
        if self.delay:
            time.sleep(self.delay)
        if self.generation is not None:
            return self.generation
        if prefix or schema is None:
            return Generation(text=self.reason, usage={"completion_tokens": 4})
        text = messages[-1].content
        pieces: list[TokenLogprob] = []
        k = min(top_logprobs, self._caps.max_top_logprobs)
        fields = list(schema.get("properties", {}))
        pieces.append(TokenLogprob(b"{", 0.0))
        for i, field_name in enumerate(fields):
            if i:
                pieces.append(TokenLogprob(b", ", 0.0))
            pieces.append(TokenLogprob(json.dumps(field_name).encode() + b": ", 0.0))
            spec = schema["properties"][field_name]
            if field_name == "reason":
                pieces.append(TokenLogprob(json.dumps(self.reason).encode(), -0.1))
                continue
            pieces.extend(self._value_tokens(text, spec, k))
        pieces.append(TokenLogprob(b"}", 0.0))
        answer = b"".join(t.token for t in pieces).decode()
        if self._caps.max_top_logprobs == 0:
            pieces = []
        return Generation(text=answer, tokens=tuple(pieces),
                          usage={"prompt_tokens": 10, "completion_tokens": len(pieces)})

    def _value_tokens(self, text: str, spec: Mapping[str, Any], k: int) -> list[TokenLogprob]:
        kind = spec.get("type")
        if kind == "object":  # multilabel: one true/false per label
            out: list[TokenLogprob] = [TokenLogprob(b"{", 0.0)]
            for j, name in enumerate(spec.get("properties", {})):
                if j:
                    out.append(TokenLogprob(b", ", 0.0))
                out.append(TokenLogprob(json.dumps(name).encode() + b": ", 0.0))
                lp_true, lp_false = self._yes_no(text, name)
                out.append(_choice([b"true", b"false"], [lp_true, lp_false], k))
            out.append(TokenLogprob(b"}", 0.0))
            return out
        if kind == "boolean":
            lps = self.label_logprobs(text, ["true", "false"])
            return [_choice([b"true", b"false"], lps, k)]
        labels = [str(v) for v in spec.get("enum", [])]
        lps = self.label_logprobs(text, labels)
        total = math.log(sum(math.exp(v) for v in lps))
        norm = [v - total for v in lps]
        best = _choice([json.dumps(v)[1:-1].encode() for v in labels], norm, k)
        return [TokenLogprob(b'"', 0.0), best, TokenLogprob(b'"', 0.0)]

    def sample(
        self,
        messages: Sequence[Message],
        *,
        n: int,
        temperature: float = SAMPLING_TEMPERATURE,
        schema: dict[str, Any] | None = None,
        max_tokens: int = 64,
    ) -> list[Generation]:
        if self.delay:
            time.sleep(self.delay)
        text = messages[-1].content
        rng = np.random.default_rng(zlib.crc32(text.encode("utf-8", "surrogatepass")))
        props = (schema or {}).get("properties", {})
        field_name = next((f for f in props if f != "reason"), "label")
        spec = props.get(field_name, {})
        out = []
        for _ in range(n):
            value: Any
            if spec.get("type") == "object":
                value = {}
                for name in spec.get("properties", {}):
                    p_true = math.exp(self._yes_no(text, name)[0] / max(temperature, 1e-6))
                    p_false = math.exp(self._yes_no(text, name)[1] / max(temperature, 1e-6))
                    value[name] = bool(rng.random() < p_true / (p_true + p_false))
            else:
                labels = ([True, False] if spec.get("type") == "boolean"
                          else list(spec.get("enum", [])))
                names = ["true", "false"] if spec.get("type") == "boolean" else labels
                lps = np.array(self.label_logprobs(text, [str(x) for x in names]))
                probs = np.exp(log_softmax(lps / max(temperature, 1e-6)))
                value = labels[int(rng.choice(len(labels), p=probs))] if labels else None
            answer = {field_name: value}
            if "reason" in props:
                answer["reason"] = self.reason
            out.append(Generation(text=json.dumps(answer), usage={"completion_tokens": 8}))
        return out


def _capabilities(
    preset: str | Mapping[str, Any], top_logprobs: int, concurrency: int
) -> Capabilities:
    if not isinstance(preset, str):
        return Capabilities(**dict(preset))
    if preset == "exact":
        return Capabilities(exact_scoring=True, max_top_logprobs=top_logprobs,
                            assistant_prefix=True, json_schema=True, sampling=True,
                            concurrency=concurrency)
    if preset == "topk":
        return Capabilities(max_top_logprobs=top_logprobs, json_schema=True, sampling=True,
                            concurrency=concurrency)
    if preset == "sampling":
        return Capabilities(json_schema=True, sampling=True, concurrency=concurrency)
    return Capabilities(concurrency=concurrency)


def _choice(surfaces: list[bytes], logprobs: list[float], k: int) -> TokenLogprob:
    """The most probable surface as the generated token, the top ``k`` as alternatives."""
    order = sorted(range(len(surfaces)), key=lambda i: (-logprobs[i], i))
    top = tuple((surfaces[i], float(logprobs[i])) for i in order[:k])
    best = order[0]
    return TokenLogprob(surfaces[best], float(logprobs[best]), top)


def _continuation_label(continuation: str, closer: str) -> str:
    literal = continuation.strip() + closer
    try:
        value = json.loads(literal)
    except json.JSONDecodeError:
        return continuation.strip().strip('"')
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _multilabel_subject(prefix: str, continuations: Sequence[str]) -> str | None:
    """The label asked about when scoring `` true`` / `` false`` after ``"label":``."""
    if [c.strip() for c in continuations] != ["true", "false"]:
        return None
    head = prefix.rstrip()
    if not head.endswith(":"):
        return None
    end = head.rfind('"', 0, len(head) - 1)
    start = head.rfind('"', 0, end)
    if start < 0 or end <= start:
        return None
    if "{" not in head[1:]:
        return None  # a binary task's own field ({"answer": true}), not a nested label
    return head[start + 1 : end]


@contextlib.contextmanager
def registered(name: str, backend: Backend) -> Iterator[Backend]:
    """Register a ready backend instance under ``name`` for the duration of a ``with``
    block, in this process: ``surelabel classify ... --backend NAME`` (in-process, e.g.
    ``surelabel.cli.main([...])``) then uses that very instance, whatever the options."""
    registry.register(name, lambda **_options: backend)
    try:
        yield backend
    finally:
        registry.unregister(name)
