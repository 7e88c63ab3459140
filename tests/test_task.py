from __future__ import annotations

import re
from pathlib import Path

import pytest

from surelabel.errors import TaskError
from surelabel.task import Task, Thresholds, load_task

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

BASE = {"name": "t", "instructions": "Classify.", "labels": ["a", "b"]}


def make(**changes: object) -> Task:
    return Task.from_dict({**BASE, **changes})


def test_examples_load() -> None:
    fvh = load_task(EXAMPLES / "fruit_veg_herb.yaml")
    assert fvh.label_names == ("fruit", "vegetable", "herb")
    assert fvh.field == "type" and fvh.reason and fvh.kind == "multiclass"
    assert fvh.labels[1].description == "savoury produce"
    assert fvh.examples[0].label == "fruit"
    pine = load_task(EXAMPLES / "pineapple.yaml")
    assert pine.boolean and pine.label_names == ("true", "false")
    assert pine.field == "containsPineapple"


def test_binary_defaults_to_true_false() -> None:
    task = Task.from_dict({"name": "b", "instructions": "Yes or no?", "kind": "binary"})
    assert task.label_names == ("true", "false") and task.boolean


def test_binary_with_named_labels_is_not_boolean() -> None:
    task = make(kind="binary", labels=["positive", "negative"])
    assert not task.boolean


def test_labels_as_list_of_mappings() -> None:
    task = make(labels=[{"name": "x", "description": "ex"}, {"name": "y"}])
    assert task.labels[0].description == "ex" and task.label_names == ("x", "y")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"labels": ["a", "a"]}, "labels: duplicate label 'a'"),
        ({"labels": ["a", ""]}, "labels[1]: empty label"),
        ({"labels": ["a"]}, "labels: need at least 2 labels, got 1"),
        ({"kind": "ranking"}, "kind: unknown kind 'ranking'"),
        ({"thresholds": {"accept": 0.4, "clarify": 0.6}}, "clarify (0.6) must not exceed accept"),
        ({"thresholds": {"accept": 1.5}}, "thresholds.accept: must be between 0 and 1"),
        ({"thresholds": {"reject": 0.1}}, "thresholds.reject: unknown threshold"),
        ({"kind": "binary", "labels": ["a", "b", "c"]}, "binary task has exactly 2 labels"),
        ({"field": "1bad"}, "field: '1bad' is not a valid JSON field name"),
        ({"colour": "red"}, "colour: unknown field"),
        ({"examples": [{"text": "x", "label": "z"}]}, "examples[0].label: 'z' is not one of"),
        ({"reason": "yes"}, "reason: must be true or false"),
    ],
)
def test_validation_names_field_and_problem(changes: dict[str, object], message: str) -> None:
    with pytest.raises(TaskError, match=re.escape(message)):
        make(**changes)


def test_missing_required_fields() -> None:
    with pytest.raises(TaskError, match="instructions: missing"):
        Task.from_dict({"name": "x", "labels": ["a", "b"]})
    with pytest.raises(TaskError, match="labels: missing"):
        Task.from_dict({"name": "x", "instructions": "y"})


def test_load_task_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ninstructions: y\nlabels: [a, a]\n")
    with pytest.raises(TaskError, match=r"bad\.yaml: labels: duplicate"):
        load_task(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(TaskError, match=r"broken\.yaml: not valid YAML"):
        load_task(broken)
    with pytest.raises(TaskError, match="cannot read"):
        load_task(tmp_path / "missing.yaml")


def test_json_task_file_and_round_trip(tmp_path: Path) -> None:
    import json

    task = load_task(EXAMPLES / "fruit_veg_herb.yaml")
    path = tmp_path / "t.json"
    path.write_text(json.dumps(task.to_dict()))
    again = load_task(path)
    assert again == task
    assert again.fingerprint() == task.fingerprint()
    assert make().fingerprint() != make(instructions="Other.").fingerprint()


def test_thresholds_default() -> None:
    assert Thresholds() == Thresholds(accept=0.9, clarify=0.5)
