"""Confidence methods: from a backend's log-probabilities to a label distribution.

- ``exact``: teacher-force every label's complete answer (local models). Every label's
  probability is exact; the reason, if wanted, is generated afterwards, conditioned on the
  chosen label, so it cannot change the label's probability.
- ``seed``: the source technique, kept for comparison. Generate the JSON answer at
  temperature 0 and take exp(logprob) of the first token of the label value (found by
  character offsets). It measures only the chosen label; the remaining probability is
  spread evenly over the other labels so the record keeps its shape.

The pipeline picks a method from the backend's declared capabilities (:func:`resolve`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from surelabel import prompt
from surelabel.backends.base import Backend, Capabilities, Generation
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
    if task.kind == "multilabel":
        answers: dict[str, bool] = {}
        per_label: dict[str, LabelDistribution] = {}
        for name in task.label_names:
            # Each label is scored after the answers already fixed for earlier labels,
            # the order in which the model itself writes them.
            result = backend.score(messages, prompt.answer_prefix(task, answers), [" true", " false"])
            warnings.extend(w for w in result.warnings if w not in warnings)
            dist = LabelDistribution.from_logprobs(BINARY, result.logprobs)
            per_label[name] = dist
            answers[name] = dist.label == "true"
        chosen = tuple(name for name, yes in answers.items() if yes)
        dist_single = None
    else:
        result = backend.score(
            messages,
            prompt.answer_prefix(task),
            prompt.continuations(task),
            closer=prompt.closer(task),
        )
        warnings.extend(result.warnings)
        dist_single = LabelDistribution.from_logprobs(task.label_names, result.logprobs)
        per_label = None
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
    schema = prompt.json_schema(task)
    if not want_reason:
        schema["properties"].pop("reason", None)
        schema["required"] = [k for k in schema["required"] if k != "reason"]
    gen = backend.generate(
        prompt.messages(task, text), schema=schema, max_tokens=SEED_MAX_TOKENS, top_logprobs=1
    )
    if not gen.tokens:
        raise MissingLogprobsError("the backend returned no token logprobs")
    warnings = tuple(gen.info.get("warnings", ()))
    try:
        parsed = json.loads(gen.text)
    except json.JSONDecodeError as exc:
        raise OffSchemaError(f"answer is not valid JSON: {gen.text[:80]!r}") from exc
    reason = parsed.get("reason") if isinstance(parsed, dict) and want_reason else None
    info = {"confidence_source": "logprobs", "usage": gen.usage}
    if task.kind == "multilabel":
        per_label = {}
        for name in task.label_names:
            value, p = _first_token_probability(gen, [task.field, name])
            if not isinstance(value, bool):
                raise OffSchemaError(f"label {name!r} is not answered with true/false")
            p_true = p if value else 1.0 - p
            per_label[name] = LabelDistribution(BINARY, (p_true, 1.0 - p_true))
        return MethodResult(per_label=per_label, reason=reason, warnings=warnings, info=info)
    value, p = _first_token_probability(gen, [task.field])
    chosen = _value_label(task, value)
    rest = (1.0 - p) / (len(task.labels) - 1)
    probs = tuple(p if name == chosen else rest for name in task.label_names)
    dist = LabelDistribution(task.label_names, probs)
    return MethodResult(distribution=dist, reason=reason, warnings=warnings, info=info)


METHODS: dict[str, Method] = {"exact": exact, "seed": seed}
# What each method needs from a backend.
REQUIRES: dict[str, Callable[[Capabilities], bool]] = {
    "exact": lambda c: c.exact_scoring,
    "seed": lambda c: c.logprobs,
}


def resolve(name: str, capabilities: Capabilities) -> str:
    """Pick the method for ``auto``, or check that the named one fits the backend."""
    if name == "auto":
        for candidate in ("exact", "topk", "sampling"):
            if candidate in METHODS and REQUIRES[candidate](capabilities):
                return candidate
        raise UnsupportedMethodError("no confidence method fits this backend")
    if name not in METHODS:
        raise UnsupportedMethodError(
            f"unknown method {name!r}; expected auto or one of {', '.join(METHODS)}"
        )
    if not REQUIRES[name](capabilities):
        raise UnsupportedMethodError(f"method {name!r} is not supported by this backend")
    return name
