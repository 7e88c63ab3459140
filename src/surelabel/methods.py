"""Confidence methods: from a backend's log-probabilities to a label distribution.

- ``exact``: teacher-force every label's complete answer (local models). Every label's
  probability is exact; the reason, if wanted, is generated afterwards, conditioned on the
  chosen label, so it cannot change the label's probability.
- ``seed``: the source technique, kept for comparison. Generate the JSON answer at
  temperature 0 and take exp(logprob) of the first token of the label value (found by
  character offsets). It measures only the chosen label; the remaining probability is
  spread evenly over the other labels so the record keeps its shape.

- ``topk``: for APIs. One temperature-0 request per item with ``top_logprobs``; every
  label's probability is read from the alternatives at the label value's tokens
  (:mod:`surelabel.topk`); labels not seen there get a documented upper bound.
- ``sampling``: for servers without logprobs. ``n`` answers at a temperature (default 5 at
  0.7); probabilities are vote shares with add-one smoothing, ``confidence_source:
  "sampling"``. Never a made-up number.

The pipeline picks a method from the backend's declared capabilities (:func:`resolve`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from surelabel import prompt
from surelabel.backends.base import (
    SAMPLES,
    SAMPLING_TEMPERATURE,
    Backend,
    Capabilities,
    Generation,
)
from surelabel.distribution import LabelDistribution
from surelabel.errors import MissingLogprobsError, OffSchemaError, UnsupportedMethodError
from surelabel.extract import locate_value, map_to_tokens
from surelabel.task import Task

BINARY = ("true", "false")
REASON_MAX_TOKENS = 32
SEED_MAX_TOKENS = 160


@dataclass(frozen=True)
class MethodResult:
    """What a method found for one item.

    Single-label tasks fill ``distribution``; multilabel tasks fill ``per_label`` with a
    (true, false) distribution per label.
    """

    distribution: LabelDistribution | None = None
    per_label: dict[str, LabelDistribution] | None = None
    reason: str | None = None
    warnings: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)


Method = Callable[[Backend, Task, str, bool], MethodResult]


def exact(backend: Backend, task: Task, text: str, want_reason: bool) -> MethodResult:
    """Exact probability of every label by teacher forcing."""
    messages = prompt.messages(task, text)
    warnings: list[str] = []
    chosen: str | tuple[str, ...]
    per_label: dict[str, LabelDistribution] | None = None
    dist_single: LabelDistribution | None = None
    if task.kind == "multilabel":
        answers: dict[str, bool] = {}
        per_label = {}
        for name in task.label_names:
            # Each label is scored after the answers already fixed for earlier labels,
            # the order in which the model itself writes them.
            pre = prompt.answer_prefix(task, answers)
            result = backend.score(messages, pre, prompt.continuations(task))
            warnings.extend(w for w in result.warnings if w not in warnings)
            dist = LabelDistribution.from_logprobs(BINARY, result.logprobs)
            per_label[name] = dist
            answers[name] = dist.label == "true"
        chosen = tuple(name for name, yes in answers.items() if yes)
    else:
        result = backend.score(
            messages,
            prompt.answer_prefix(task),
            prompt.continuations(task),
            closer=prompt.closer(task),
        )
        warnings.extend(result.warnings)
        dist_single = LabelDistribution.from_logprobs(task.label_names, result.logprobs)
        chosen = dist_single.label
    reason = None
    if want_reason:
        gen = backend.generate(
            messages,
            prefix=prompt.reason_prefix(task, chosen),
            max_tokens=REASON_MAX_TOKENS,
            stop=['"'],
        )
        reason = prompt.trim_reason(gen.text)
    return MethodResult(
        distribution=dist_single,
        per_label=per_label,
        reason=reason,
        warnings=tuple(warnings),
        info={"confidence_source": "logprobs"},
    )


def _value_label(task: Task, value: Any) -> str:
    if isinstance(value, bool):
        name = "true" if value else "false"
    elif isinstance(value, str):
        name = value
    else:
        raise OffSchemaError(f"label value {value!r} is neither a string nor a boolean")
    if name not in task.label_names:
        raise OffSchemaError(f"model answered {name!r}, not one of the labels")
    return name


def _first_token_probability(gen: Generation, path: list[str]) -> tuple[Any, float]:
    span = locate_value(gen.text, path)
    span = map_to_tokens(span, gen.text, [t.token for t in gen.tokens])
    return span.value, math.exp(gen.tokens[span.first_token].logprob)


def seed(backend: Backend, task: Task, text: str, want_reason: bool) -> MethodResult:
    """The source technique: exp(logprob) of the first token of the generated label value."""
    gen = backend.generate(
        prompt.messages(task, text),
        schema=_answer_schema(task, want_reason),
        max_tokens=SEED_MAX_TOKENS,
        top_logprobs=1,
    )
    if not gen.tokens:
        raise MissingLogprobsError("the backend returned no token logprobs")
    warnings = tuple(gen.info.get("warnings", ()))
    reason = _reason(gen.text, want_reason)
    info = {"confidence_source": "logprobs", "usage": gen.usage}
    if task.kind == "multilabel":
        per_label = {}
        for name in task.label_names:
            value, p = _first_token_probability(gen, [task.field, name])
            if not isinstance(value, bool):
                raise OffSchemaError(f"label {name!r} is not answered with true/false")
            p_true = p if value else 1.0 - p
            per_label[name] = LabelDistribution(
                BINARY, (p_true, 1.0 - p_true), chosen="true" if value else "false"
            )
        return MethodResult(per_label=per_label, reason=reason, warnings=warnings, info=info)
    value, p = _first_token_probability(gen, [task.field])
    chosen = _value_label(task, value)
    rest = (1.0 - p) / (len(task.labels) - 1)
    probs = tuple(p if name == chosen else rest for name in task.label_names)
    dist = LabelDistribution(task.label_names, probs, chosen=chosen)
    return MethodResult(distribution=dist, reason=reason, warnings=warnings, info=info)


def _answer_schema(task: Task, want_reason: bool) -> dict[str, Any]:
    schema = prompt.json_schema(task)
    if not want_reason:
        schema["properties"].pop("reason", None)
        schema["required"] = [k for k in schema["required"] if k != "reason"]
    return schema


def _reason(text: str, want_reason: bool) -> str | None:
    if not want_reason:
        return None
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        return None
    reason = parsed.get("reason") if isinstance(parsed, dict) else None
    return prompt.trim_reason(reason) if isinstance(reason, str) else None


def topk(backend: Backend, task: Task, text: str, want_reason: bool) -> MethodResult:
    """Every label's probability from the top-k alternatives of one generated answer."""
    from surelabel import topk as reader

    caps = backend.capabilities
    gen = backend.generate(
        prompt.messages(task, text),
        schema=_answer_schema(task, want_reason),
        max_tokens=SEED_MAX_TOKENS,
        top_logprobs=caps.max_top_logprobs,
    )
    if not gen.tokens and caps.sampling:
        result = sampling(backend, task, text, want_reason)
        note = "the server returned no logprobs; used sampling"
        return MethodResult(
            result.distribution, result.per_label, result.reason,
            (note, *result.warnings), result.info,
        )
    info: dict[str, Any] = {
        "confidence_source": "logprobs",
        "response_format": gen.info.get("response_format"),
        "usage": gen.usage,
    }
    warnings = list(gen.info.get("warnings", ()))
    if task.kind == "multilabel":
        per_label = {}
        for name in task.label_names:
            r = reader.read_value(gen, [task.field, name], {"true": True, "false": False})
            per_label[name] = r.distribution
            warnings.extend(f"{name}: {w}" for w in r.warnings)
        return MethodResult(per_label=per_label, reason=_reason(gen.text, want_reason),
                            warnings=tuple(warnings), info=info)
    values = {name: prompt.label_value(task, name) for name in task.label_names}
    r = reader.read_value(gen, [task.field], values)
    warnings.extend(r.warnings)
    if r.value not in values.values() and r.value not in values:
        warnings.append(f"model answered {r.value!r}, not a label; distribution from top-k")
    info["chosen_logprob"] = round(r.chosen_logprob, 6)
    if r.bounded:
        info["upper_bound_labels"] = list(r.bounded)
    return MethodResult(distribution=r.distribution, reason=_reason(gen.text, want_reason),
                        warnings=tuple(warnings), info=info)


def sampling(backend: Backend, task: Task, text: str, want_reason: bool) -> MethodResult:
    """Self-consistency: vote shares of ``n`` sampled answers, add-one smoothed.

    ``n`` and the temperature come from the backend's ``samples`` and
    ``sampling_temperature`` attributes when it has them (default 5 at 0.7). Answers that
    are not valid JSON or name no label count for no label; ``label_mass`` is the share of
    answers that named one.
    """
    n = int(getattr(backend, "samples", SAMPLES))
    temperature = float(getattr(backend, "sampling_temperature", SAMPLING_TEMPERATURE))
    sample = backend.sample  # type: ignore[attr-defined]
    gens: list[Generation] = sample(
        prompt.messages(task, text), n=n, temperature=temperature,
        schema=_answer_schema(task, want_reason), max_tokens=SEED_MAX_TOKENS,
    )
    usage: dict[str, int] = {}
    for g in gens:
        for k, v in g.usage.items():
            usage[k] = usage.get(k, 0) + v
    info: dict[str, Any] = {
        "confidence_source": "sampling",
        "samples": n,
        "response_format": gens[0].info.get("response_format") if gens else None,
        "usage": usage,
    }
    answers: list[dict[str, Any]] = []
    for g in gens:
        try:
            parsed = json.loads(g.text)
        except json.JSONDecodeError:
            continue
        if isinstance(parsed, dict):
            answers.append(parsed)

    def share(labels: tuple[str, ...], votes: list[str]) -> LabelDistribution:
        counts = [votes.count(name) for name in labels]
        probs = tuple((c + 1) / (len(votes) + len(labels)) for c in counts)
        return LabelDistribution(labels, probs, label_mass=len(votes) / n if n else None)

    warnings: tuple[str, ...] = ()
    if len(answers) < n:
        warnings = (f"{n - len(answers)} of {n} samples were not valid JSON",)
    if task.kind == "multilabel":
        per_label = {}
        for name in task.label_names:
            votes = []
            for a in answers:
                value = a.get(task.field, {})
                if isinstance(value, dict) and isinstance(value.get(name), bool):
                    votes.append("true" if value[name] else "false")
            per_label[name] = share(BINARY, votes)
        reason = next((_reason(g.text, want_reason) for g in gens), None)
        return MethodResult(per_label=per_label, reason=reason, warnings=warnings, info=info)
    votes = []
    for a in answers:
        try:
            votes.append(_value_label(task, a.get(task.field)))
        except OffSchemaError:
            continue
    dist = share(task.label_names, votes)
    reason = None
    for g in gens:
        try:
            if _value_label(task, json.loads(g.text).get(task.field)) == dist.label:
                reason = _reason(g.text, want_reason)
                break
        except (OffSchemaError, json.JSONDecodeError, AttributeError):
            continue
    return MethodResult(distribution=dist, reason=reason, warnings=warnings, info=info)


METHODS: dict[str, Method] = {"exact": exact, "seed": seed, "topk": topk, "sampling": sampling}
# What each method needs from a backend.
REQUIRES: dict[str, Callable[[Capabilities], bool]] = {
    "exact": lambda c: c.exact_scoring,
    "seed": lambda c: c.logprobs,
    "topk": lambda c: c.logprobs,
    "sampling": lambda c: c.sampling,
}


def resolve(name: str, capabilities: Capabilities) -> str:
    """Pick the method for ``auto``, or check that the named one fits the backend."""
    if name == "auto":
        for candidate in ("exact", "topk", "sampling"):
            if REQUIRES[candidate](capabilities):
                return candidate
        raise UnsupportedMethodError("no confidence method fits this backend")
    if name not in METHODS:
        raise UnsupportedMethodError(
            f"unknown method {name!r}; expected auto or one of {', '.join(METHODS)}"
        )
    if not REQUIRES[name](capabilities):
        raise UnsupportedMethodError(f"method {name!r} is not supported by this backend")
    return name
