"""Find a field's value in a generated JSON answer, by character offsets, and the tokens under it.

The fragile way to read a label's logprob is to look for a token equal to ``"true"`` or to
take "the token after the first ``:``". Tokenizers merge punctuation with values (``":"``,
``":"true``, `` "``, ``"}``) and split labels (``veget`` + ``able``), so both break. Here
the answer text is rebuilt from the tokens, parsed as JSON with offsets, and the value's
character span is mapped back onto the tokens that cover it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from surelabel.errors import OffSchemaError

_WS = " \t\r\n"
_decoder = json.JSONDecoder()


@dataclass(frozen=True)
class ValueSpan:
    """Where a JSON value sits in the answer.

    ``start``/``end`` are character offsets of the whole literal (quotes included);
    ``content_start`` skips a string's opening quote. ``first_token`` is the index of the
    token holding the value's first content character; ``last_token`` the index of the
    token holding its last character (closing quote included).
    """

    value: Any
    start: int
    end: int
    content_start: int
    first_token: int = -1
    last_token: int = -1


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _object_members(text: str, i: int) -> list[tuple[str, int, int, Any]]:
    """Members of the JSON object starting at ``text[i] == '{'``: (key, start, end, value)."""
    if i >= len(text) or text[i] != "{":
        raise OffSchemaError("answer is not a JSON object")
    members: list[tuple[str, int, int, Any]] = []
    i = _skip_ws(text, i + 1)
    if i < len(text) and text[i] == "}":
        return members
    while True:
        if i >= len(text) or text[i] != '"':
            raise OffSchemaError(f"expected a field name at character {i} of the answer")
        key, i = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
        i = _skip_ws(text, i)
        if i >= len(text) or text[i] != ":":
            raise OffSchemaError(f"expected ':' after field {key!r}")
        i = _skip_ws(text, i + 1)
        try:
            value, end = _decoder.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            raise OffSchemaError(f"field {key!r} holds no valid JSON value") from exc
        members.append((key, i, end, value))
        i = _skip_ws(text, end)
        if i < len(text) and text[i] == ",":
            i = _skip_ws(text, i + 1)
            continue
        if i < len(text) and text[i] == "}":
            return members
        raise OffSchemaError("answer JSON object is not closed")


def locate_value(text: str, path: Sequence[str]) -> ValueSpan:
    """Find the value at ``path`` (e.g. ``["type"]`` or ``["emotions", "joy"]``) in ``text``.

    Text before the first ``{`` (a code fence, a stray space) is allowed.
    """
    i = text.find("{")
    if i < 0:
        raise OffSchemaError(f"no JSON object in the answer: {text[:60]!r}")
    start = end = 0
    value: Any = None
    for depth, key in enumerate(path):
        found = [m for m in _object_members(text, i) if m[0] == key]
        if not found:
            raise OffSchemaError(f"answer has no field {'.'.join(path[: depth + 1])!r}")
        _, start, end, value = found[0]
        i = start
    content = start + 1 if isinstance(value, str) else start
    return ValueSpan(value=value, start=start, end=end, content_start=content)


def map_to_tokens(span: ValueSpan, text: str, tokens: Sequence[bytes]) -> ValueSpan:
    """Fill in which tokens cover the span. ``text`` must equal the joined token bytes."""
    encoded = text.encode("utf-8")
    if b"".join(tokens) != encoded:
        raise OffSchemaError("answer text does not match its tokens")
    first_byte = len(text[: span.content_start].encode("utf-8"))
    last_byte = len(text[: span.end].encode("utf-8")) - 1
    first = last = -1
    pos = 0
    for idx, tok in enumerate(tokens):
        nxt = pos + len(tok)
        if first < 0 and pos <= first_byte < nxt:
            first = idx
        if pos <= last_byte < nxt:
            last = idx
            break
        pos = nxt
    if first < 0 or last < 0:
        raise OffSchemaError("cannot map the label value onto the answer's tokens")
    return ValueSpan(
        value=span.value,
        start=span.start,
        end=span.end,
        content_start=span.content_start,
        first_token=first,
        last_token=last,
    )
