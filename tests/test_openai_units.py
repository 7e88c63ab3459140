"""Fast tests of the OpenAI backend's parts: cache, retries, formats, resume, ordering.

HTTP here goes through an injected client on ``httpx.MockTransport`` (no sockets); the
tests against a real server are in ``test_openai_server.py``.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from surelabel.backends.openai import (
    OpenAIBackend,
    _is_format_rejection,
    _RateLimiter,
    _retry_after,
    parse_response,
)
from surelabel.batch import classify_ordered, resume_output
from surelabel.cache import ResponseCache, request_key
from surelabel.classifier import Classifier, Record
from surelabel.cli import main
from surelabel.errors import BackendError, InputError, UserError
from surelabel.io import Row
from surelabel.prompt import Message
from surelabel.task import Task

TASK = Task.from_dict({
    "name": "p", "instructions": "Pineapple?", "kind": "binary",
    "field": "containsPineapple", "labels": ["true", "false"], "reason": False,
})
MESSAGES = [Message("user", "Hawaiian pizza")]


def completion(tokens: list[tuple[str, float, list[tuple[str, float]]]]) -> dict[str, Any]:
    content = [
        {
            "token": t, "bytes": list(t.encode()), "logprob": lp,
            "top_logprobs": [{"token": a, "bytes": list(a.encode()), "logprob": b} for a, b in top],
        }
        for t, lp, top in tokens
    ]
    return {
        "id": "c", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{
            "index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": "".join(t for t, _, _ in tokens)},
            "logprobs": {"content": content},
        }],
        "usage": {"prompt_tokens": 20, "completion_tokens": len(tokens), "total_tokens": 30},
    }


ANSWER = completion([
    ('{"', 0.0, []), ("containsPineapple", 0.0, []), ('":', 0.0, []),
    (" true", -0.2, [(" true", -0.2), (" false", -1.8)]), ("}", 0.0, []),
])


class Server:
    """A scripted endpoint for MockTransport: a list of responses, then ``ANSWER``."""

    def __init__(self, script: list[tuple[int, dict[str, str], Any]] | None = None) -> None:
        self.script = list(script or [])
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        if self.script:
            status, headers, payload = self.script.pop(0)
        else:
            status, headers, payload = 200, {}, ANSWER
        if isinstance(payload, Exception):
            raise payload
        return httpx.Response(status, headers=headers, json=payload)


def sync_backend(server: Server, **kw: Any) -> OpenAIBackend:
    client = openai.OpenAI(
        api_key="k", base_url="http://test/v1",
        # openai 3 is built on httpx2 but still takes an httpx client.
        http_client=httpx.Client(transport=httpx.MockTransport(server)),  # type: ignore[arg-type]
    )
    return OpenAIBackend("m", client=client, backoff=0.001, **kw)


def test_capabilities_are_declared() -> None:
    b = OpenAIBackend("m", base_url="http://127.0.0.1:1/v1", top_logprobs=5)
    caps = b.capabilities
    assert not caps.exact_scoring and caps.max_top_logprobs == 5 and caps.json_schema
    assert caps.sampling
    assert Classifier(TASK, b).method == "topk"
    b0 = OpenAIBackend("m", base_url="http://127.0.0.1:1/v1", top_logprobs=0)
    assert Classifier(TASK, b0).method == "sampling"


def test_missing_key_and_bad_options_are_user_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(UserError, match="OPENAI_API_KEY"):
        OpenAIBackend("gpt-4o-mini")
    with pytest.raises(UserError, match="response format"):
        OpenAIBackend("m", base_url="http://x/v1", response_format="xml")
    with pytest.raises(UserError, match="client"):
        OpenAIBackend("m", client=object())


def test_generate_sends_schema_and_logprobs_and_reads_the_answer() -> None:
    server = Server()
    with sync_backend(server) as b:
        gen = b.generate(MESSAGES, schema={"type": "object"}, top_logprobs=20, max_tokens=9)
    body = server.bodies[0]
    assert body["temperature"] == 0 and body["logprobs"] is True and body["top_logprobs"] == 20
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["strict"] is True
    assert gen.text == '{"containsPineapple": true}'
    assert gen.info["response_format"] == "json_schema"
    assert gen.usage["prompt_tokens"] == 20


def test_rejected_json_schema_falls_back_and_remembers() -> None:
    reject = {"error": {"message": "response_format json_schema is not supported"}}
    server = Server([(400, {}, reject), (422, {}, {"detail": "bad response_format"})])
    with sync_backend(server) as b:
        gen = b.generate(MESSAGES, schema={"type": "object"}, top_logprobs=2)
        assert gen.info["response_format"] == "json_object"
        assert b.generate(MESSAGES, schema={"type": "object"}).info["response_format"] == (
            "json_object"
        )
    kinds = [body.get("response_format", {}) for body in server.bodies]
    assert kinds[0]["type"] == "json_schema"
    assert kinds[1] == {"type": "json_object", "schema": {"type": "object"}}
    assert kinds[2] == kinds[3] == {"type": "json_object"}


def test_retries_honour_retry_after_then_succeed() -> None:
    server = Server([
        (429, {"retry-after": "0"}, {"error": {"message": "slow down"}}),
        (503, {}, {"error": {"message": "overloaded"}}),
        (200, {}, None),  # placeholder replaced below
    ])
    server.script[2] = (200, {}, ANSWER)
    with sync_backend(server) as b:
        gen = b.generate(MESSAGES, top_logprobs=2)
        assert b.stats == {"requests": 3, "retries": 2, "cache_hits": 0}
    assert gen.text.startswith("{")


def test_connection_errors_are_retried_and_give_up_with_one_line() -> None:
    server = Server([(0, {}, httpx.ConnectError("refused"))] * 3)
    with sync_backend(server, max_retries=2) as b, pytest.raises(BackendError) as info:
        b.generate(MESSAGES)
    assert info.value.retryable and "gave up after 3 attempts" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("status", "exc", "text"), [
    (401, UserError, "authentication failed (401)"),
    (404, UserError, "unknown model or wrong --base-url"),
    (400, BackendError, "HTTP 400"),
])
def test_client_errors_fail_at_once(status: int, exc: type[Exception], text: str) -> None:
    server = Server([(status, {}, {"error": {"message": "nope"}})])
    with sync_backend(server) as b, pytest.raises(exc, match=text.replace("(", r"\(").replace(
        ")", r"\)"
    )):
        b.generate(MESSAGES)
    assert len(server.bodies) == 1


def test_async_client_and_cache(tmp_path: Path) -> None:
    calls = []

    async def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        await asyncio.sleep(0)
        return httpx.Response(200, json=ANSWER)

    client = openai.AsyncOpenAI(
        api_key="k", base_url="http://test/v1",
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),  # type: ignore[arg-type]
    )
    cache = ResponseCache(tmp_path / "c.sqlite")
    with OpenAIBackend("m", client=client, cache=cache) as b:
        first = b.generate(MESSAGES, top_logprobs=2)
        second = b.generate(MESSAGES, top_logprobs=2)
        assert b.stats["requests"] == 1 and b.stats["cache_hits"] == 1
    assert first.text == second.text and second.info["cached"] is True
    assert len(calls) == 1


def test_agenerate_from_another_event_loop_runs_concurrently() -> None:
    server = Server()
    with sync_backend(server, concurrency=4) as b:

        async def many() -> list[str]:
            gens = await asyncio.gather(
                *(b.agenerate([Message("user", f"item {i}")], top_logprobs=2) for i in range(6))
            )
            return [g.text for g in gens]

        texts = asyncio.run(many())
    assert len(texts) == 6 and len(server.bodies) == 6
    assert sorted(body["messages"][0]["content"] for body in server.bodies) == [
        f"item {i}" for i in range(6)
    ]


def test_sampling_uses_seeds_and_temperature() -> None:
    server = Server()
    with sync_backend(server, samples=3, sampling_temperature=0.9) as b:
        gens = b.sample(MESSAGES, n=3, temperature=0.9)
    assert len(gens) == 3
    assert sorted(body["seed"] for body in server.bodies) == [0, 1, 2]
    assert {body["temperature"] for body in server.bodies} == {0.9}
    assert all("logprobs" not in body for body in server.bodies)


def test_request_key_is_canonical() -> None:
    a = request_key("http://x/v1/", "m", {"a": 1, "b": [1, 2]})
    assert a == request_key("http://x/v1", "m", {"b": [1, 2], "a": 1})
    assert a != request_key("http://y/v1", "m", {"a": 1, "b": [1, 2]})
    assert a != request_key("http://x/v1", "n", {"a": 1, "b": [1, 2]})
    assert a != request_key("http://x/v1", "m", {"a": 1, "b": [2, 1]})


def test_cache_persists_and_is_thread_safe(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "r.sqlite"
    cache = ResponseCache(path)
    assert cache.get("k") is None

    def put(i: int) -> None:
        cache.put(f"k{i}", "e", "m", {"i": i})

    threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    again = ResponseCache(path)
    assert len(again) == 8 and again.get("k3") == {"i": 3}


def test_retry_after_forms() -> None:
    assert _retry_after({"retry-after": "3"}) == 3.0
    assert _retry_after({"retry-after-ms": "250"}) == 0.25
    assert _retry_after({}) is None
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    got = _retry_after({"retry-after": future})
    assert got is not None and 25 <= got <= 31
    assert _is_format_rejection(500, "Input should be 'text' or 'json_object' at response_format")
    assert not _is_format_rejection(500, "injected fault 500")


def test_rate_limiter_waits_when_the_minute_is_full() -> None:
    async def scenario() -> bool:
        limiter = _RateLimiter(rpm=2, tpm=None)
        await limiter.acquire(10)
        await limiter.acquire(10)
        try:
            await asyncio.wait_for(limiter.acquire(10), timeout=0.05)
        except asyncio.TimeoutError:
            return True
        return False

    assert asyncio.run(scenario())

    async def tokens() -> bool:
        limiter = _RateLimiter(rpm=None, tpm=100)
        event = await limiter.acquire(60)
        _RateLimiter.settle(event, 90)  # the request really used 90 tokens
        try:
            await asyncio.wait_for(limiter.acquire(20), timeout=0.05)
        except asyncio.TimeoutError:
            return True
        return False

    assert asyncio.run(tokens())


def test_parse_response_without_logprobs() -> None:
    gen = parse_response({"choices": [{"message": {"content": "{}"}, "finish_reason": "stop"}]})
    assert gen.text == "{}" and gen.tokens == ()
    with pytest.raises(BackendError):
        parse_response({"choices": []})


def rows(n: int) -> list[Row]:
    return [Row(id=f"r{i}", text=f"text {i}", line=i + 1, extra={}) for i in range(n)]


def test_resume_keeps_complete_rows_and_drops_a_torn_line(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    items = rows(5)
    lines = [json.dumps({"id": r.id, "text": r.text, "label": "x"}) for r in items[:3]]
    out.write_text("\n".join(lines) + '\n{"id": "r3", "te')
    assert resume_output(out, items) == 3
    assert out.read_text() == "\n".join(lines) + "\n"
    assert resume_output(tmp_path / "missing.jsonl", items) == 0


def test_resume_refuses_another_jobs_output(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"id": "other", "text": "x"}) + "\n")
    with pytest.raises(InputError, match="does not match input row 1"):
        resume_output(out, rows(3))
    out.write_text("".join(json.dumps({"id": r.id, "text": r.text}) + "\n" for r in rows(4)))
    with pytest.raises(InputError, match="more rows"):
        resume_output(out, rows(3))
    out.write_text(json.dumps({"id": "r0", "text": "text 0", "method": "seed"}) + "\n")
    with pytest.raises(InputError, match="made with method 'seed', not 'topk'"):
        resume_output(out, rows(3), {"method": "topk"})
    assert resume_output(out, rows(3), {"method": "seed"}) == 1


class SlowClassifier:
    """Finishes items out of order; classify_ordered must still yield them in order."""

    def classify_one(self, text: str, id: Any = None) -> Record:
        time.sleep(random.uniform(0, 0.01))
        return Record(id=id, text=text)


def test_classify_ordered_keeps_input_order() -> None:
    items = rows(60)
    got = list(classify_ordered(SlowClassifier(), items, workers=8))  # type: ignore[arg-type]
    assert [r.id for r in got] == [r.id for r in items]


def test_cli_rejects_a_bad_header(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    task = tmp_path / "t.yaml"
    task.write_text(json.dumps({
        "name": "p", "instructions": "Pineapple?", "kind": "binary",
        "field": "containsPineapple", "labels": ["true", "false"],
    }))
    items = tmp_path / "i.txt"
    items.write_text("pizza\n")
    code = main(["classify", str(task), str(items), "--backend", "openai",
                 "--base-url", "http://127.0.0.1:1/v1", "--header", "nocolon"])
    assert code == 2
    assert "NAME:VALUE" in capsys.readouterr().err
