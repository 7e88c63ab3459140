"""Fast tests of the OpenAI backend's parts: wire format, the SDK's retries as the backend
uses them, formats, cache, spec and pickling, rate caps, resume, ordering.

HTTP here goes through an injected client on ``httpx.MockTransport`` (no sockets), except
where the backend must build its own client: there a loopback ``http.server`` answers. The
tests against a real OpenAI-compatible server are in ``test_openai_server.py``.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import random
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from surelabel.backends._openai_wire import (
    estimate_tokens,
    greedy_body,
    is_format_rejection,
    parse_response,
    with_format,
)
from surelabel.backends._ratelimit import MinuteWindow, RateLimiter
from surelabel.backends.openai import OpenAIBackend, _no_retry_on_format_rejection
from surelabel.backends.registry import BackendSpec
from surelabel.batch import classify_ordered, resume_output
from surelabel.cache import ResponseCache, open_cache, request_key
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
LOCAL = "http://127.0.0.1:1/v1"


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
FORMAT_500 = {"error": {"message": "Input should be 'text' or 'json_object' at response_format"}}


class Server:
    """A scripted endpoint for MockTransport: a list of responses, then ``ANSWER``.

    A script entry is (status, headers, payload); a payload that is an exception is raised
    instead (a dropped connection)."""

    def __init__(self, script: list[tuple[int, dict[str, str], Any]] | None = None) -> None:
        self.script = list(script or [])
        self.bodies: list[dict[str, Any]] = []
        self.times: list[float] = []
        self.headers: list[httpx.Headers] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        self.times.append(time.monotonic())
        self.headers.append(request.headers)
        if self.script:
            status, headers, payload = self.script.pop(0)
        else:
            status, headers, payload = 200, {}, ANSWER
        if isinstance(payload, Exception):
            raise payload
        return httpx.Response(status, headers=headers, json=payload)


def sync_backend(server: Server, *, client_retries: int = 2, **kw: Any) -> OpenAIBackend:
    client = openai.OpenAI(
        api_key="k", base_url="http://test/v1", max_retries=client_retries,
        # openai 3 is built on httpx2 but still takes an httpx client.
        http_client=httpx.Client(transport=httpx.MockTransport(server)),  # type: ignore[arg-type]
    )
    return OpenAIBackend("m", client=client, **kw)


def async_backend(server: Server, **kw: Any) -> OpenAIBackend:
    client = openai.AsyncOpenAI(
        api_key="k", base_url="http://test/v1",
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(server)),  # type: ignore[arg-type]
    )
    return OpenAIBackend("m", client=client, **kw)


class Loopback:
    """A real HTTP server on 127.0.0.1 for backends that build their own client."""

    def __init__(self, script: list[tuple[int, dict[str, Any]]] | None = None) -> None:
        self.script = list(script or [])
        self.bodies: list[dict[str, Any]] = []
        self.auth: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.bodies.append(body)
                owner.auth.append(self.headers.get("Authorization", ""))
                status, payload = owner.script.pop(0) if owner.script else (200, ANSWER)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def loopback() -> Iterator[Loopback]:
    server = Loopback()
    yield server
    server.close()


# -- options, capabilities, spec ----------------------------------------------------------


def test_capabilities_are_declared() -> None:
    b = OpenAIBackend("m", base_url=LOCAL, top_logprobs=5, concurrency=3)
    caps = b.capabilities
    assert not caps.exact_scoring and caps.max_top_logprobs == 5 and caps.json_schema
    assert caps.sampling and caps.concurrency == 3
    assert Classifier(TASK, b).method == "topk"
    b0 = OpenAIBackend("m", base_url=LOCAL, top_logprobs=0)
    assert Classifier(TASK, b0).method == "sampling"


def test_missing_key_and_bad_options_are_user_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(UserError, match="OPENAI_API_KEY"):
        OpenAIBackend("gpt-4o-mini")
    with pytest.raises(UserError, match="OPENAI_API_KEY"):
        OpenAIBackend("gpt-4o-mini", base_url="https://api.openai.com/v1")
    with pytest.raises(UserError, match="response format"):
        OpenAIBackend("m", base_url="http://x/v1", response_format="xml")
    with pytest.raises(UserError, match="client"):
        OpenAIBackend("m", client=object())  # type: ignore[arg-type]
    with pytest.raises(UserError, match="max-rpm"):
        OpenAIBackend("m", base_url="http://x/v1", max_rpm=0)


def test_openai_base_url_of_another_server_needs_no_key(
    monkeypatch: pytest.MonkeyPatch, loopback: Loopback
) -> None:
    # Regression: $OPENAI_BASE_URL pointing at a local server failed with "no API key",
    # while --base-url with the same URL worked.
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", loopback.url)
    with OpenAIBackend("m") as b:
        assert b.endpoint == loopback.url
        assert b.generate(MESSAGES).text.startswith("{")
    with OpenAIBackend("m", base_url=loopback.url) as b:
        b.generate(MESSAGES)
    assert len(loopback.bodies) == 2
    monkeypatch.setenv("OPENAI_BASE_URL", "https://api.openai.com/v1")
    with pytest.raises(UserError, match="no API key"):
        OpenAIBackend("m")


def test_spec_pickles_and_builds_lazily(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loopback: Loopback
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    path = tmp_path / "c.sqlite"
    b = OpenAIBackend("m", base_url=loopback.url, api_key="sk-from-env", cache=path,
                      max_rpm=100, timeout=5.0)
    spec = b.spec
    assert spec == BackendSpec("openai", {
        "model": "m", "base_url": loopback.url, "top_logprobs": 20, "concurrency": 8,
        "timeout": 5.0, "max_rpm": 100, "cache": str(path), "response_format": "json_schema",
    })
    assert "sk-from-env" not in json.dumps(spec.to_dict())  # a key from the environment
    copy = pickle.loads(pickle.dumps(b))
    assert isinstance(copy, OpenAIBackend) and copy.spec == spec
    assert copy._loop is None and copy._client is None  # nothing opened by unpickling
    assert copy.generate(MESSAGES).text.startswith("{")
    copy.close()
    assert len(ResponseCache(path)) == 1
    explicit = OpenAIBackend("m", base_url=loopback.url, api_key="sk-given", cache=True)
    assert explicit.spec is not None
    assert explicit.spec.options["api_key"] == "sk-given" and explicit.spec.options["cache"]


def test_live_objects_make_no_spec_and_refuse_to_pickle(tmp_path: Path) -> None:
    for b in (
        OpenAIBackend("m", base_url=LOCAL, cache=ResponseCache(tmp_path / "c.sqlite")),
        sync_backend(Server()),
    ):
        assert b.spec is None
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(b)


# -- requests and the SDK's retries -------------------------------------------------------


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
    with sync_backend(server, max_retries=5) as b:
        gen = b.generate(MESSAGES, schema={"type": "object"}, top_logprobs=2)
        assert gen.info["response_format"] == "json_object"
        assert b.generate(MESSAGES, schema={"type": "object"}).info["response_format"] == (
            "json_object"
        )
        assert b.stats["retries"] == 0
    kinds = [body.get("response_format", {}) for body in server.bodies]
    assert kinds[0]["type"] == "json_schema"
    assert kinds[1] == {"type": "json_object", "schema": {"type": "object"}}
    assert kinds[2] == kinds[3] == {"type": "json_object"}


def test_a_500_naming_response_format_is_not_retried(loopback: Loopback) -> None:
    # llama-cpp-python's server rejects json_schema with a 500; the client this backend
    # builds marks it x-should-retry: false, so the SDK moves on at once.
    loopback.script = [(500, FORMAT_500)]
    with OpenAIBackend("m", base_url=loopback.url, max_retries=5) as b:
        gen = b.generate(MESSAGES, schema={"type": "object"})
        assert b.stats == {"requests": 2, "retries": 0, "cache_hits": 0}
    assert gen.info["response_format"] == "json_object_schema"
    assert [body["response_format"]["type"] for body in loopback.bodies] == [
        "json_schema", "json_object",
    ]


def test_the_format_hook_leaves_other_errors_alone() -> None:
    async def mark(status: int, payload: Any) -> str | None:
        response = httpx.Response(status, json=payload)
        await _no_retry_on_format_rejection(response)
        flag: str | None = response.headers.get("x-should-retry")
        return flag

    assert asyncio.run(mark(500, FORMAT_500)) == "false"
    assert asyncio.run(mark(500, {"error": {"message": "out of memory"}})) is None
    assert asyncio.run(mark(200, ANSWER)) is None


def test_retries_honour_retry_after_then_succeed() -> None:
    server = Server([
        (429, {"retry-after-ms": "800"}, {"error": {"message": "slow down"}}),
        (503, {"retry-after": "0.01"}, {"error": {"message": "overloaded"}}),
    ])
    with async_backend(server, max_retries=3) as b:
        gen = b.generate(MESSAGES, top_logprobs=2)
        assert b.stats == {"requests": 3, "retries": 2, "cache_hits": 0}
    assert gen.text.startswith("{")
    # The SDK's own first backoff is at most 0.5 s: a longer wait is the server's.
    assert server.times[1] - server.times[0] >= 0.8
    assert [h["x-stainless-retry-count"] for h in server.headers] == ["0", "1", "2"]


def test_connection_errors_are_retried_and_give_up_with_one_line() -> None:
    server = Server([(0, {}, httpx.ConnectError("refused"))] * 3)
    with sync_backend(server, max_retries=2) as b, pytest.raises(BackendError) as info:
        b.generate(MESSAGES)
    assert info.value.retryable and "gave up after 3 attempts" in str(info.value)
    assert "refused" in str(info.value) and "\n" not in str(info.value)
    assert b.stats == {"requests": 3, "retries": 2, "cache_hits": 0}


def test_server_errors_give_up_retryable_after_the_sdk_budget() -> None:
    fail = (500, {"retry-after-ms": "1"}, {"error": {"message": "boom"}})
    server = Server([fail] * 3)
    with async_backend(server, max_retries=2) as b, pytest.raises(BackendError) as info:
        b.generate(MESSAGES)
    assert info.value.retryable and "HTTP 500" in str(info.value)
    assert "gave up after 3 attempts" in str(info.value) and len(server.bodies) == 3


def test_the_server_can_forbid_a_retry() -> None:
    server = Server([(503, {"x-should-retry": "false"}, {"error": {"message": "down"}})])
    with sync_backend(server, max_retries=4) as b, pytest.raises(BackendError) as info:
        b.generate(MESSAGES)
    assert not info.value.retryable and len(server.bodies) == 1


@pytest.mark.parametrize("answer", [
    httpx.Response(200, text="Bad gateway, try later"),
    httpx.Response(200, headers={"Content-Type": "application/json"}, text="{torn"),
    httpx.Response(200, json={"choices": []}),
])
def test_an_unreadable_answer_is_a_backend_error(answer: httpx.Response) -> None:
    client = openai.OpenAI(
        api_key="k", base_url="http://test/v1",
        http_client=httpx.Client(transport=httpx.MockTransport(lambda r: answer)),  # type: ignore[arg-type]
    )
    with OpenAIBackend("m", client=client) as b, pytest.raises(BackendError) as info:
        b.generate(MESSAGES)
    assert "\n" not in str(info.value) and not info.value.retryable


@pytest.mark.parametrize(("status", "exc", "text"), [
    (401, UserError, "authentication failed (401)"),
    (403, UserError, "permission denied (403)"),
    (404, UserError, "unknown model or wrong --base-url"),
    (400, BackendError, "HTTP 400"),
])
def test_client_errors_fail_at_once(status: int, exc: type[Exception], text: str) -> None:
    server = Server([(status, {}, {"error": {"message": "nope"}})])
    with sync_backend(server, max_retries=5) as b, pytest.raises(exc) as info:
        b.generate(MESSAGES)
    assert text in str(info.value) and "nope" in str(info.value)
    assert "\n" not in str(info.value)
    assert not getattr(info.value, "retryable", False)
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


def test_a_rejected_format_is_cached_too(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    reject = {"error": {"message": "response_format json_schema is not supported"}}
    server = Server([(400, {}, reject)])
    with sync_backend(server, cache=str(path)) as b:
        b.generate(MESSAGES, schema={"type": "object"})
    again = Server()
    with sync_backend(again, cache=str(path)) as b:
        gen = b.generate(MESSAGES, schema={"type": "object"})
        assert b.stats == {"requests": 0, "retries": 0, "cache_hits": 2}
    assert gen.info == {"response_format": "json_object_schema", "cached": True}
    assert again.bodies == []


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
    with async_backend(server) as b:
        gens = b.sample(MESSAGES, n=3, temperature=0.9)
    assert len(gens) == 3
    assert sorted(body["seed"] for body in server.bodies) == [0, 1, 2]
    assert {body["temperature"] for body in server.bodies} == {0.9}
    assert all("logprobs" not in body for body in server.bodies)


# -- wire format ---------------------------------------------------------------------------


def test_parse_response_without_logprobs() -> None:
    gen = parse_response({"choices": [{"message": {"content": "{}"}, "finish_reason": "stop"}]})
    assert gen.text == "{}" and gen.tokens == ()
    with pytest.raises(BackendError):
        parse_response({"choices": []})


def test_bodies_and_format_levels() -> None:
    body = greedy_body(MESSAGES, max_tokens=8, stop=["\n"], top_logprobs=0)
    assert body == {"messages": [{"role": "user", "content": "Hawaiian pizza"}],
                    "temperature": 0, "max_tokens": 8, "stop": ["\n"]}
    schema = {"type": "object"}
    assert "response_format" not in with_format(body, "json_schema", None)
    assert "response_format" not in with_format(body, "prompt", schema)
    assert with_format(body, "json_object", schema)["response_format"] == {"type": "json_object"}
    assert "response_format" not in body
    assert estimate_tokens(body) > 8
    assert is_format_rejection(500, "Input should be 'text' or 'json_object' at response_format")
    assert not is_format_rejection(500, "injected fault 500")
    assert not is_format_rejection(503, "response_format")


# -- cache -----------------------------------------------------------------------------


def test_request_key_is_canonical() -> None:
    a = request_key("http://x/v1/", "m", {"a": 1, "b": [1, 2]})
    assert a == request_key("http://x/v1", "m", {"b": [1, 2], "a": 1})
    assert a != request_key("http://y/v1", "m", {"a": 1, "b": [1, 2]})
    assert a != request_key("http://x/v1", "n", {"a": 1, "b": [1, 2]})
    assert a != request_key("http://x/v1", "m", {"a": 1, "b": [2, 1]})


def test_cache_persists_and_is_thread_safe(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "r.sqlite"
    cache = ResponseCache(path)
    assert not path.exists()  # opened on first use
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
    copy = pickle.loads(pickle.dumps(cache))
    assert copy.path == path and copy.get("k5") == {"i": 5}


def test_cache_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SURELABEL_CACHE_DIR", str(tmp_path))
    assert open_cache(None) is None and open_cache(False) is None
    default = open_cache(True)
    assert default is not None and default.path == tmp_path / "responses.sqlite"
    given = ResponseCache(tmp_path / "x.sqlite")
    assert open_cache(given) is given
    named = open_cache(tmp_path / "y.sqlite")
    assert named is not None and named.path == tmp_path / "y.sqlite"
    with pytest.raises(UserError, match="cache"):
        OpenAIBackend("m", base_url=LOCAL, cache=3)  # type: ignore[arg-type]


# -- rate caps ---------------------------------------------------------------------------


async def _blocks(limiter: MinuteWindow, tokens: int) -> bool:
    try:
        await asyncio.wait_for(limiter.acquire(tokens), timeout=0.05)
    except asyncio.TimeoutError:
        return True
    return False


def test_rate_limiter_waits_when_the_minute_is_full() -> None:
    async def requests() -> bool:
        limiter = MinuteWindow(rpm=2)
        await limiter.acquire(10)
        await limiter.acquire(10)
        return await _blocks(limiter, 10)

    assert asyncio.run(requests())

    async def tokens() -> bool:
        limiter = MinuteWindow(tpm=100)
        ticket = await limiter.acquire(60)
        limiter.settle(ticket, tokens=90)  # the request really used 90 tokens
        return await _blocks(limiter, 20)

    assert asyncio.run(tokens())

    async def retries() -> bool:
        limiter = MinuteWindow(rpm=3)
        ticket = await limiter.acquire(1)
        limiter.settle(ticket, tokens=0, requests=3)  # the SDK retried twice
        return await _blocks(limiter, 1)

    assert asyncio.run(retries())
    assert isinstance(MinuteWindow(), RateLimiter)
    assert asyncio.run(MinuteWindow().acquire(10**9)) is None  # no caps: never waits


def test_the_backend_settles_what_requests_used() -> None:
    server = Server([(429, {"retry-after-ms": "1"}, {"error": {"message": "slow"}})])
    with sync_backend(server, max_tpm=1000, max_rpm=2) as b:
        b.generate(MESSAGES)
        limiter = b.limiter
        assert isinstance(limiter, MinuteWindow)
        # Two HTTP attempts, the second reporting 30 tokens: the minute is full.
        assert [e.tokens for e in limiter._events] == [30.0, 0.0]
        assert asyncio.run(_blocks(limiter, 1))


# -- batch runs -------------------------------------------------------------------------


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
                 "--base-url", LOCAL, "--header", "nocolon"])
    assert code == 2
    assert "NAME:VALUE" in capsys.readouterr().err
