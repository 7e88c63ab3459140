"""Prompts and answer formats for a task.

The model answers with JSON, label field first and reason after it, e.g.
``{"type": "fruit", "reason": "sweet and eaten raw"}``. This module builds the chat
messages, the JSON schema for structured output, and, for exact scoring, the answer prefix
(``{"type":``) and each label's continuation (`` "fruit"``) whose probability is measured.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from surelabel.errors import TaskError
from surelabel.task import Example, Subtask, Task

REASON_MAX_WORDS = 10

#: How the answer format is shown to the model.
#:
#: - ``placeholder``: the labels are listed on their own and the JSON example holds a
#:   placeholder where the answer goes (``{"type": "<one of the labels above>"}``).
#: - ``listed``: the JSON example writes the labels in (``{"type": "fruit" or "herb"}``),
#:   so a real label value sits right where the answer starts: small models then answer
#:   the first-listed label far too often (docs/CALIBRATION.md, "The prompt").
PROMPT_STYLES: tuple[str, ...] = ("placeholder", "listed")
DEFAULT_PROMPT_STYLE = "placeholder"


@dataclass(frozen=True)
class Message:
    """One chat message."""

    role: str
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


def label_value(task: Task, label: str) -> bool | str:
    """The JSON value that stands for ``label`` in the answer."""
    if task.boolean:
        return label == "true"
    return label


def value_literal(task: Task, label: str) -> str:
    """The label as it is written in the JSON answer (``true``, ``"fruit"``)."""
    return json.dumps(label_value(task, label), ensure_ascii=False)


def answer_json(
    task: Task, label: str | tuple[str, ...], reason: str | None = None
) -> str:
    """A complete answer in the format the model is asked to produce."""
    payload: dict[str, Any]
    if task.kind == "multilabel":
        chosen = {label} if isinstance(label, str) else set(label)
        payload = {task.field: {name: name in chosen for name in task.label_names}}
    else:
        assert isinstance(label, str)
        payload = {task.field: label_value(task, label)}
    if reason is not None:
        payload["reason"] = reason
    return json.dumps(payload, ensure_ascii=False)


def check_style(style: str) -> str:
    if style not in PROMPT_STYLES:
        raise TaskError(f"unknown prompt style {style!r}; expected one of "
                        f"{', '.join(PROMPT_STYLES)}")
    return style


def system_prompt(task: Task, style: str = DEFAULT_PROMPT_STYLE) -> str:
    """Instructions, the labels with their descriptions, and the answer format."""
    check_style(style)
    lines = [task.instructions.strip(), ""]
    described = [label for label in task.labels if label.description]
    if task.kind == "multilabel":
        lines.append("Decide for each label whether it applies (true) or not (false):")
    elif not task.boolean:
        lines.append("Labels:")
    if not task.boolean or described:
        for label in task.labels:
            desc = f": {label.description}" if label.description else ""
            lines.append(f"- {label.name}{desc}")
        lines.append("")
    reason = f', "reason": "<at most {REASON_MAX_WORDS} words>"' if task.reason else ""
    yes_no = "<true or false>" if style == "placeholder" else "true or false"
    if task.kind == "multilabel":
        inner = ", ".join(f'"{name}": {yes_no}' for name in task.label_names)
        fmt = f'{{"{task.field}": {{{inner}}}{reason}}}'
    elif task.boolean:
        fmt = f'{{"{task.field}": {yes_no}{reason}}}'
    elif style == "placeholder":
        fmt = f'{{"{task.field}": "<one of the labels above>"{reason}}}'
    else:
        options = " or ".join(value_literal(task, name) for name in task.label_names)
        fmt = f'{{"{task.field}": {options}{reason}}}'
    lines.append(f"Answer with JSON only, in this format: {fmt}")
    return "\n".join(lines)


def _example_messages(task: Task, example: Example) -> list[Message]:
    return [
        Message("user", example.text),
        Message("assistant", answer_json(task, example.label, example.reason)),
    ]


def messages(task: Task, text: str, style: str = DEFAULT_PROMPT_STYLE) -> list[Message]:
    """Chat messages for one item: system, few-shot turns, then the item as the user turn.

    Everything before the last message is the same for every item of a task, so a local
    backend evaluates it once and reuses its KV cache. ``style``: see :data:`PROMPT_STYLES`.
    """
    out = [Message("system", system_prompt(task, style))]
    for example in task.examples:
        out.extend(_example_messages(task, example))
    out.append(Message("user", text))
    return out


def answer_prefix(task: Task, chosen: Mapping[str, bool] | None = None) -> str:
    """The answer text up to (not including) the value being scored.

    For multilabel tasks, ``chosen`` holds the answers already fixed for earlier labels;
    the prefix then ends before the next label's value.
    """
    if task.kind != "multilabel":
        return f'{{"{task.field}":'
    return _label_prefix(task, task.label_names[len(chosen or {})], chosen)


def _label_prefix(task: Task, label: str, earlier: Mapping[str, bool] | None) -> str:
    parts = [f'"{name}": {json.dumps(value)}' for name, value in (earlier or {}).items()]
    parts.append(f'"{label}":')
    return f'{{"{task.field}": {{' + ", ".join(parts)


def subtask_request(
    task: Task, subtask: Subtask, earlier: Mapping[str, bool] | None = None
) -> tuple[str, list[str], str]:
    """What scores one subtask: the answer prefix, the continuations, the closer.

    For a multilabel label, ``earlier`` holds the answers already fixed for the labels the
    answer lists before it; the prefix writes them, then the label's key.
    """
    if task.kind != "multilabel":
        return answer_prefix(task), continuations(task), closer(task)
    return _label_prefix(task, subtask.name, earlier), continuations(task), closer(task)


def continuations(task: Task) -> list[str]:
    """The text scored for each label after :func:`answer_prefix`, up to its :func:`closer`.

    Multilabel tasks score `` true`` / `` false`` per label.
    """
    if task.kind == "multilabel":
        return [" true", " false"]
    cut = -len(closer(task)) or None
    return [" " + value_literal(task, name)[:cut] for name in task.label_names]


def closer(task: Task) -> str:
    """What must follow a label's text for the label to be complete.

    String labels need their closing quote: without it ``"herb`` would also count the
    probability of ``"herbal"``. JSON ``true``/``false`` are complete literals on their own.
    """
    if task.kind == "multilabel" or task.boolean:
        return ""
    return '"'


def reason_prefix(task: Task, label: str | tuple[str, ...]) -> str:
    """The answer up to the opening quote of the reason, with the label already fixed."""
    full = answer_json(task, label, reason="")
    # answer_json ends with `"reason": ""}`; cut before the closing quote and brace.
    return full[: -len('"}')]


def json_schema(task: Task) -> dict[str, Any]:
    """JSON schema of the answer: the label field first, then the reason."""
    value: dict[str, Any]
    if task.kind == "multilabel":
        value = {
            "type": "object",
            "properties": {name: {"type": "boolean"} for name in task.label_names},
            "required": list(task.label_names),
            "additionalProperties": False,
        }
    elif task.boolean:
        value = {"type": "boolean"}
    else:
        value = {"type": "string", "enum": list(task.label_names)}
    properties: dict[str, Any] = {task.field: value}
    if task.reason:
        properties["reason"] = {"type": "string", "maxLength": 100}
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def trim_reason(reason: str) -> str:
    """Keep a reason to at most ``REASON_MAX_WORDS`` words."""
    words = reason.split()
    return " ".join(words[:REASON_MAX_WORDS])
