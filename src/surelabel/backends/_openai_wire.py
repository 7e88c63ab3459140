"""The Chat Completions wire format: request bodies in, :class:`Generation` out. No I/O.

:mod:`surelabel.backends.openai` sends what this module builds and hands back what the
server answered; everything here is a pure function of its arguments, so it is tested on
recorded responses alone.

Structured output has four levels, tried in :data:`FORMATS` order until the server takes
one: ``json_schema`` (strict), ``json_object`` with the schema attached (llama.cpp's
extension), plain ``json_object``, and ``prompt`` (no ``response_format``: the system prompt
alone asks for the JSON).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from surelabel.backends.base import Generation, TokenLogprob
from surelabel.errors import BackendError
from surelabel.prompt import Message

FORMATS = ("json_schema", "json_object_schema", "json_object", "prompt")


def greedy_body(
    messages: Sequence[Message], *, max_tokens: int, stop: Sequence[str] = (), top_logprobs: int = 0
) -> dict[str, Any]:
    """A temperature-0 request, asking for ``top_logprobs`` alternatives per token (0: none)."""
    body: dict[str, Any] = {
        "messages": [m.as_dict() for m in messages],
        "temperature": 0,
        "max_tokens": max_tokens,
    }
    if top_logprobs > 0:
        body["logprobs"] = True
        body["top_logprobs"] = top_logprobs
    if stop:
        body["stop"] = list(stop)
    return body


def sample_bodies(
    messages: Sequence[Message], *, n: int, temperature: float, max_tokens: int
) -> list[dict[str, Any]]:
    """``n`` requests at ``temperature``, seeds ``0..n-1``: distinct answers, each cacheable."""
    base = {
        "messages": [m.as_dict() for m in messages],
        "temperature": temperature,
        "max_tokens": max_tokens,
    }
    return [{**base, "seed": i} for i in range(n)]


def with_format(body: Mapping[str, Any], fmt: str, schema: dict[str, Any] | None) -> dict[str, Any]:
    """``body`` with the ``response_format`` of level ``fmt`` (none for ``prompt``)."""
    out = dict(body)
    if schema is None or fmt == "prompt":
        return out
    if fmt == "json_schema":
        out["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "answer", "strict": True, "schema": schema},
        }
    elif fmt == "json_object_schema":
        out["response_format"] = {"type": "json_object", "schema": schema}
    elif fmt == "json_object":
        out["response_format"] = {"type": "json_object"}
    else:
        raise ValueError(f"unknown response format {fmt!r}")
    return out


def is_format_rejection(status: int, message: str) -> bool:
    """Whether an error response says the server does not take the ``response_format`` sent.

    OpenAI and vLLM answer 400, FastAPI servers 422, llama-cpp-python's server 500; all name
    the field.
    """
    low = message.lower()
    return status in (400, 422, 500) and ("response_format" in low or "json_schema" in low)


def estimate_tokens(body: Mapping[str, Any]) -> int:
    """A rough token count of a request before it is sent (4 characters a token, plus the
    completion budget), for the tokens-per-minute cap until the response gives the real one."""
    return len(json.dumps(body.get("messages") or [])) // 4 + int(body.get("max_tokens") or 0)


def parse_response(data: Mapping[str, Any]) -> Generation:
    """A Chat Completions response (as JSON) to a :class:`Generation`.

    Token bytes come from ``bytes`` where the server gives them (OpenAI does; a token may
    hold part of a UTF-8 character), else from the token string.
    """
    choices = data.get("choices") or []
    if not choices:
        raise BackendError("response has no choices")
    choice = choices[0]
    message = choice.get("message") or {}
    text = message.get("content") or ""
    tokens: list[TokenLogprob] = []
    logprobs = choice.get("logprobs") or {}
    for item in logprobs.get("content") or ():
        top = tuple(
            (_token_bytes(alt), float(alt["logprob"])) for alt in item.get("top_logprobs") or ()
        )
        tokens.append(TokenLogprob(_token_bytes(item), float(item["logprob"]), top))
    usage = {k: int(v) for k, v in (data.get("usage") or {}).items() if isinstance(v, int)}
    return Generation(
        text=text,
        tokens=tuple(tokens),
        finish_reason=choice.get("finish_reason") or "stop",
        usage=usage,
    )


def _token_bytes(item: Mapping[str, Any]) -> bytes:
    raw = item.get("bytes")
    if raw:
        return bytes(raw)
    token: str = item.get("token") or ""
    return token.encode("utf-8")
