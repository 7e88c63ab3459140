from __future__ import annotations

import pytest

from surelabel.errors import OffSchemaError
from surelabel.extract import locate_value, map_to_tokens


def tokens_of(*parts: str) -> list[bytes]:
    return [p.encode() for p in parts]


def test_source_technique_tokens_with_merged_punctuation() -> None:
    toks = tokens_of('{"', "contains", "Pineapple", '":', "true", ',"', "reason", '":"', "x", '"}')
    text = b"".join(toks).decode()
    span = map_to_tokens(locate_value(text, ["containsPineapple"]), text, toks)
    assert span.value is True
    assert toks[span.first_token] == b"true" and span.first_token == span.last_token


def test_value_merged_with_colon_and_quote() -> None:
    toks = tokens_of('{"', "type", '":"', "veget", "able", '"}')
    text = b"".join(toks).decode()
    span = map_to_tokens(locate_value(text, ["type"]), text, toks)
    assert span.value == "vegetable"
    # First content character 'v' sits in "veget"; the closing quote in '"}'.
    assert (span.first_token, span.last_token) == (3, 5)


def test_quote_and_label_in_one_token() -> None:
    toks = tokens_of('{"type":', ' "fruit', '",', ' "reason": "sweet"}')
    text = b"".join(toks).decode()
    span = map_to_tokens(locate_value(text, ["type"]), text, toks)
    assert span.first_token == 1 and span.value == "fruit"


def test_field_named_like_a_value_is_not_confused() -> None:
    text = '{"reason": "type: fruit", "type": "herb"}'
    assert locate_value(text, ["type"]).value == "herb"


def test_nested_multilabel_path_and_leading_text() -> None:
    text = 'Sure: {"tags": {"joy": false, "anger": true}}'
    span = locate_value(text, ["tags", "anger"])
    assert span.value is True and text[span.start : span.end] == "true"


def test_multibyte_text_maps_by_bytes() -> None:
    toks = [b'{"t": "', "pi\u00f1a".encode()[:3], "pi\u00f1a".encode()[3:], b'"}']
    text = b"".join(toks).decode()
    span = map_to_tokens(locate_value(text, ["t"]), text, toks)
    assert (span.first_token, span.last_token) == (1, 3)


@pytest.mark.parametrize(
    "text", ["no json here", '{"other": 1}', '{"type": }', '{"type": "a"']
)
def test_off_schema_answers_raise(text: str) -> None:
    with pytest.raises(OffSchemaError):
        locate_value(text, ["type"])
