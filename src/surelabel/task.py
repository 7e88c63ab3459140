"""Task definitions: what to classify, into which labels, and how sure we must be.

A task is usually read from a YAML or JSON file (:func:`load_task`) but can be built in
Python (:meth:`Task.from_dict` or the dataclass itself). Validation errors name the field
and the problem, and are raised as :class:`~surelabel.errors.TaskError`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from surelabel.errors import TaskError

Kind = Literal["binary", "multiclass", "multilabel"]
KINDS: tuple[str, ...] = ("binary", "multiclass", "multilabel")
_FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TASK_KEYS = {
    "name",
    "instructions",
    "kind",
    "field",
    "labels",
    "reason",
    "thresholds",
    "examples",
    "review",
}


@dataclasses.dataclass(frozen=True)
class Label:
    """One allowed answer, with an optional description shown to the model."""

    name: str
    description: str = ""


#: The two answers of every yes/no decision (a binary task with JSON booleans, and each
#: label of a multilabel task), in the order their probabilities are given.
YES_NO: tuple[str, str] = ("true", "false")


@dataclasses.dataclass(frozen=True)
class Subtask:
    """One decision the model makes per item.

    A binary or multiclass task is one subtask over its labels; a multilabel task is one
    yes/no subtask per label ("does it apply?"). The methods, the classifier, calibration
    and evaluation all work on subtasks, so a multilabel task is not a second code path.

    Attributes
    ----------
    name:
        The task's answer field, or for a multilabel task the label's name.
    labels:
        The subtask's answers: the task's labels, or :data:`YES_NO`.
    path:
        Where the subtask's value sits in the answer JSON (``("type",)``,
        ``("emotions", "joy")``).
    values:
        The JSON value that stands for each answer (``"fruit"``, ``True``).
    """

    name: str
    labels: tuple[str, ...]
    path: tuple[str, ...]
    values: tuple[Any, ...]

    def label_of(self, value: Any) -> str | None:
        """The answer a JSON value stands for; ``None`` when it is none of them."""
        for label, v in zip(self.labels, self.values):
            if type(v) is type(value) and v == value:
                return label
        # A string answer for a boolean ("true") still names it.
        if isinstance(value, str) and value in self.labels:
            return value
        return None


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Confidence cut-offs for the decision.

    ``accept`` if confidence > ``accept``; ``clarify`` if confidence < ``clarify``;
    ``review`` otherwise.
    """

    accept: float = 0.9
    clarify: float = 0.5

    def __post_init__(self) -> None:
        for name in ("accept", "clarify"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TaskError(f"thresholds.{name}: must be a number, got {value!r}")
            if not 0.0 <= float(value) <= 1.0:
                raise TaskError(f"thresholds.{name}: must be between 0 and 1, got {value}")
        if self.clarify > self.accept:
            raise TaskError(
                f"thresholds: clarify ({self.clarify}) must not exceed accept ({self.accept})"
            )


@dataclasses.dataclass(frozen=True)
class Example:
    """A few-shot example: a text and its label (or labels, for multilabel tasks)."""

    text: str
    label: str | tuple[str, ...]
    reason: str | None = None


@dataclasses.dataclass(frozen=True)
class Task:
    """A classification task.

    Parameters
    ----------
    name:
        Short identifier, used in outputs, calibration files and the review service.
    instructions:
        What the model is told to do.
    labels:
        The allowed labels, in order.
    kind:
        ``binary`` (two labels, by default JSON ``true``/``false``), ``multiclass`` (one of
        several labels) or ``multilabel`` (any subset of the labels).
    field:
        The JSON field that holds the answer, e.g. ``type`` in ``{"type": "fruit"}``.
    reason:
        Also ask for a short reason after the label.
    thresholds:
        Decision thresholds.
    examples:
        Optional few-shot examples.
    review:
        Settings of the review service for this task (the task file's ``review:``
        section; ``surelabel serve`` reads and checks them, other commands ignore them).
        They change neither the prompt nor the fingerprint.
    """

    name: str
    instructions: str
    labels: tuple[Label, ...]
    kind: Kind = "multiclass"
    field: str = "label"
    reason: bool = False
    thresholds: Thresholds = dataclasses.field(default_factory=Thresholds)
    examples: tuple[Example, ...] = ()
    review: Mapping[str, Any] = dataclasses.field(
        default_factory=dict, hash=False, compare=False
    )

    def __post_init__(self) -> None:
        # Labels and examples may be given as plain data: ("positive", "negative").
        if isinstance(self.labels, (str, bytes)) or not isinstance(self.labels, Sequence):
            raise TaskError("labels: expected a sequence of label names or Label objects")
        object.__setattr__(self, "labels", tuple(
            label if isinstance(label, Label) else Label(_label_name(label, f"labels[{i}]"))
            for i, label in enumerate(self.labels)
        ))
        if isinstance(self.thresholds, Mapping):
            object.__setattr__(self, "thresholds", _parse_thresholds(self.thresholds))
        object.__setattr__(self, "examples", tuple(
            ex if isinstance(ex, Example) else _parse_examples([ex], self.kind)[0]
            for ex in self.examples
        ))
        if not isinstance(self.name, str) or not self.name.strip():
            raise TaskError("name: must be a non-empty string")
        if not isinstance(self.instructions, str) or not self.instructions.strip():
            raise TaskError("instructions: must be a non-empty string")
        if self.kind not in KINDS:
            raise TaskError(f"kind: unknown kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if not isinstance(self.field, str) or not _FIELD_RE.match(self.field):
            raise TaskError(
                f"field: {self.field!r} is not a valid JSON field name "
                "(letters, digits and _, not starting with a digit)"
            )
        if self.field == "reason":
            raise TaskError("field: 'reason' is reserved for the model's reason")
        names = [label.name for label in self.labels]
        for i, label_name in enumerate(names):
            if not isinstance(label_name, str) or not label_name.strip():
                raise TaskError(f"labels[{i}]: empty label")
            if label_name != label_name.strip():
                raise TaskError(f"labels[{i}]: label {label_name!r} has surrounding whitespace")
        seen: set[str] = set()
        for label_name in names:
            if label_name in seen:
                raise TaskError(f"labels: duplicate label {label_name!r}")
            seen.add(label_name)
        if len(names) < 2:
            raise TaskError(f"labels: need at least 2 labels, got {len(names)}")
        if self.kind == "binary" and len(names) != 2:
            raise TaskError(f"labels: a binary task has exactly 2 labels, got {len(names)}")
        for i, example in enumerate(self.examples):
            given = (example.label,) if isinstance(example.label, str) else example.label
            if self.kind != "multilabel" and len(given) != 1:
                raise TaskError(f"examples[{i}].label: a {self.kind} example has one label")
            for label_name in given:
                if label_name not in seen:
                    raise TaskError(
                        f"examples[{i}].label: {label_name!r} is not one of the labels "
                        f"({', '.join(names)})"
                    )

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(label.name for label in self.labels)

    @property
    def boolean(self) -> bool:
        """True when the answer is a JSON boolean (binary task with labels true/false)."""
        return self.kind == "binary" and set(self.label_names) == {"true", "false"}

    @property
    def subtasks(self) -> tuple[Subtask, ...]:
        """The decisions made per item: one, or one yes/no per label (multilabel)."""
        if self.kind == "multilabel":
            return tuple(
                Subtask(name, YES_NO, (self.field, name), (True, False))
                for name in self.label_names
            )
        values = tuple((name == "true") if self.boolean else name for name in self.label_names)
        return (Subtask(self.field, self.label_names, (self.field,), values),)

    def fingerprint(self) -> str:
        """A short hash of everything that changes the prompt or the label set."""
        data = self.to_dict()
        data.pop("review", None)  # service settings: the prompt is the same
        payload = json.dumps(data, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """The task as plain data, in the task-file format."""
        return {
            "name": self.name,
            "instructions": self.instructions,
            "kind": self.kind,
            "field": self.field,
            "labels": {label.name: label.description for label in self.labels},
            "reason": self.reason,
            "thresholds": {"accept": self.thresholds.accept, "clarify": self.thresholds.clarify},
            "examples": [
                {
                    "text": ex.text,
                    "label": ex.label if isinstance(ex.label, str) else list(ex.label),
                    **({"reason": ex.reason} if ex.reason else {}),
                }
                for ex in self.examples
            ],
            **({"review": dict(self.review)} if self.review else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Task:
        """Build and validate a task from task-file data."""
        if not isinstance(data, Mapping):
            raise TaskError("task: expected a mapping of fields (name, instructions, labels, ...)")
        unknown = sorted(set(data) - _TASK_KEYS)
        if unknown:
            raise TaskError(
                f"{unknown[0]}: unknown field; expected some of {', '.join(sorted(_TASK_KEYS))}"
            )
        for key in ("name", "instructions"):
            if key not in data:
                raise TaskError(f"{key}: missing")
        kind = data.get("kind", "multiclass")
        if kind not in KINDS:
            raise TaskError(f"kind: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
        labels = _parse_labels(data.get("labels"), kind)
        default_field = {"binary": "answer", "multilabel": "labels"}.get(kind, "label")
        reason = data.get("reason", False)
        if not isinstance(reason, bool):
            raise TaskError(f"reason: must be true or false, got {reason!r}")
        return cls(
            name=_as_str(data["name"], "name"),
            instructions=_as_str(data["instructions"], "instructions"),
            kind=kind,
            field=_as_str(data.get("field", default_field), "field"),
            labels=labels,
            reason=reason,
            thresholds=_parse_thresholds(data.get("thresholds")),
            examples=_parse_examples(data.get("examples"), kind),
            review=_parse_review(data.get("review")),
        )


def _as_str(value: Any, where: str) -> str:
    if isinstance(value, bool) or value is None:
        raise TaskError(f"{where}: must be a string, got {value!r}")
    if isinstance(value, (int, float)):
        return str(value)
    if not isinstance(value, str):
        raise TaskError(f"{where}: must be a string, got {type(value).__name__}")
    return value


def _label_name(value: Any, where: str) -> str:
    # YAML reads `true`/`false` as booleans; a binary task's labels are those words.
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        raise TaskError(f"{where}: empty label")
    return _as_str(value, where)


def _parse_labels(raw: Any, kind: str) -> tuple[Label, ...]:
    if raw is None:
        if kind == "binary":
            return (Label("true"), Label("false"))
        raise TaskError("labels: missing")
    if isinstance(raw, Mapping):
        return tuple(
            Label(_label_name(name, f"labels[{i}]"), _as_str(desc or "", f"labels.{name}"))
            for i, (name, desc) in enumerate(raw.items())
        )
    if isinstance(raw, Sequence) and not isinstance(raw, (str, bytes)):
        out = []
        for i, item in enumerate(raw):
            if isinstance(item, Mapping):
                if "name" not in item:
                    raise TaskError(f"labels[{i}]: a label mapping needs a 'name'")
                out.append(
                    Label(
                        _label_name(item["name"], f"labels[{i}].name"),
                        _as_str(item.get("description", "") or "", f"labels[{i}].description"),
                    )
                )
            else:
                out.append(Label(_label_name(item, f"labels[{i}]")))
        return tuple(out)
    raise TaskError("labels: expected a list of names or a mapping of name -> description")


def _parse_thresholds(raw: Any) -> Thresholds:
    if raw is None:
        return Thresholds()
    if not isinstance(raw, Mapping):
        raise TaskError("thresholds: expected a mapping {accept: ..., clarify: ...}")
    unknown = sorted(set(raw) - {"accept", "clarify"})
    if unknown:
        raise TaskError(f"thresholds.{unknown[0]}: unknown threshold; expected accept, clarify")
    return Thresholds(**{k: raw[k] for k in ("accept", "clarify") if k in raw})


def _parse_review(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise TaskError("review: expected a mapping of review-service settings")
    return {str(k): v for k, v in raw.items()}


def _parse_examples(raw: Any, kind: str) -> tuple[Example, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)):
        raise TaskError("examples: expected a list of {text, label}")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or "text" not in item or "label" not in item:
            raise TaskError(f"examples[{i}]: expected a mapping with 'text' and 'label'")
        label = item["label"]
        parsed: str | tuple[str, ...]
        if isinstance(label, Sequence) and not isinstance(label, str):
            parsed = tuple(_label_name(v, f"examples[{i}].label") for v in label)
        else:
            parsed = _label_name(label, f"examples[{i}].label")
        if kind == "multilabel" and isinstance(parsed, str):
            parsed = (parsed,)
        reason = item.get("reason")
        out.append(
            Example(
                text=_as_str(item["text"], f"examples[{i}].text"),
                label=parsed,
                reason=None if reason is None else _as_str(reason, f"examples[{i}].reason"),
            )
        )
    return tuple(out)


#: Values a task file may hold once YAML aliases are expanded. A real task file holds a few
#: thousand; an "alias bomb" (a few lines of anchors referring to anchors) holds billions,
#: and walking it takes minutes and gigabytes.
MAX_YAML_VALUES = 1_000_000


class _TooLarge(Exception):
    pass


def _load_yaml(text: str) -> Any:
    """``yaml.safe_load``, refusing a document whose aliases expand past
    :data:`MAX_YAML_VALUES` values before anything walks the expanded data."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size: dict[int, int] = {}

        # Expanded size of each node, each node visited once (an alias is the same node
        # object again, so shared sub-trees are counted as often as they are used but
        # walked only once).
        def expanded(n: yaml.Node, depth: int = 0) -> int:
            key = id(n)
            if key in size:
                return size[key]
            if depth > 1000:
                raise _TooLarge("YAML nested more than 1000 levels deep")
            size[key] = MAX_YAML_VALUES + 1  # a node inside itself (recursive alias)
            total = 1
            if isinstance(n, yaml.SequenceNode):
                for child in n.value:
                    total += expanded(child, depth + 1)
                    if total > MAX_YAML_VALUES:
                        break
            elif isinstance(n, yaml.MappingNode):
                for k, v in n.value:
                    total += expanded(k, depth + 1) + expanded(v, depth + 1)
                    if total > MAX_YAML_VALUES:
                        break
            size[key] = total
            return total

        if expanded(node) > MAX_YAML_VALUES:
            raise _TooLarge(
                f"more than {MAX_YAML_VALUES:,} values once YAML aliases are expanded "
                "(an alias bomb?); a task file needs far fewer"
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_task(path: str | Path) -> Task:
    """Read and validate a task file (YAML or JSON).

    Errors are :class:`~surelabel.errors.TaskError` whose message starts with the file name.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise TaskError(f"task file {p}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else _load_yaml(text)
    except _TooLarge as exc:
        raise TaskError(f"task file {p}: {exc}") from None
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise TaskError(f"task file {p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: "
                        f"{str(exc).splitlines()[0]}") from exc
    try:
        return Task.from_dict(data)
    except TaskError as exc:
        raise TaskError(f"task file {p}: {exc}") from exc
