from __future__ import annotations

import json
from pathlib import Path

from surelabel import prompt
from surelabel.task import Task, load_task

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_messages_shared_prefix_and_item_last() -> None:
    task = load_task(EXAMPLES / "fruit_veg_herb.yaml")
    a, b = prompt.messages(task, "tomato"), prompt.messages(task, "basil")
    assert a[:-1] == b[:-1]
    assert a[-1].role == "user" and a[-1].content == "tomato"
    assert [m.role for m in a] == ["system", "user", "assistant", "user"]
    assert json.loads(a[2].content) == {"type": "fruit"}
    assert "fruit: sweet or sour produce" in a[0].content
    assert '"reason"' in a[0].content


def test_answer_parts_rebuild_the_answer() -> None:
    task = load_task(EXAMPLES / "fruit_veg_herb.yaml")
    for label, cont in zip(task.label_names, prompt.continuations(task)):
        answer = prompt.answer_prefix(task) + cont + prompt.closer(task)
        assert json.loads(answer + "}") == {"type": label}
    pine = load_task(EXAMPLES / "pineapple.yaml")
    assert prompt.continuations(pine) == [" true", " false"] and prompt.closer(pine) == ""
    assert json.loads(prompt.answer_prefix(pine) + " true}") == {"containsPineapple": True}


def test_reason_prefix_fixes_the_label() -> None:
    task = load_task(EXAMPLES / "fruit_veg_herb.yaml")
    pre = prompt.reason_prefix(task, "herb")
    assert pre == '{"type": "herb", "reason": "'
    assert json.loads(pre + 'leafy"}') == {"type": "herb", "reason": "leafy"}


def test_multilabel_prefix_carries_earlier_answers() -> None:
    task = Task.from_dict(
        {"name": "m", "instructions": "Tag.", "kind": "multilabel", "field": "tags",
         "labels": ["joy", "anger", "fear"]}
    )
    assert prompt.answer_prefix(task) == '{"tags": {"joy":'
    assert prompt.answer_prefix(task, {"joy": True}) == '{"tags": {"joy": true, "anger":'
    schema = prompt.json_schema(task)
    assert schema["properties"]["tags"]["required"] == ["joy", "anger", "fear"]


def test_schema_label_first_then_reason() -> None:
    task = load_task(EXAMPLES / "fruit_veg_herb.yaml")
    schema = prompt.json_schema(task)
    assert list(schema["properties"]) == ["type", "reason"]
    assert schema["properties"]["type"]["enum"] == ["fruit", "vegetable", "herb"]
    pine = load_task(EXAMPLES / "pineapple.yaml")
    assert prompt.json_schema(pine)["properties"]["containsPineapple"] == {"type": "boolean"}


def test_trim_reason() -> None:
    assert prompt.trim_reason(" a b  c ") == "a b c"
    assert len(prompt.trim_reason(" ".join(["w"] * 30)).split()) == prompt.REASON_MAX_WORDS
