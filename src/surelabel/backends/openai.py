"""Any OpenAI-compatible Chat Completions endpoint: OpenAI, Azure, vLLM, llama.cpp, Ollama...

An API cannot teacher-force labels, so this backend declares ``exact_scoring=False`` and
reports the ``top_logprobs`` alternatives of each generated token; :mod:`surelabel.topk`
turns them into a label distribution. Where a server returns no logprobs, the ``sampling``
method draws several answers at a temperature instead (:meth:`OpenAIBackend.sample`).

Every request goes through one asyncio event loop on a private thread:

- a semaphore bounds the requests in flight (``concurrency``); callers in many threads
  (the CLI's batch path) simply block on their own request;
- retries with exponential backoff and jitter on 429, 5xx, timeouts and dropped
  connections, honouring ``Retry-After``; 400/401/403/404 fail at once with a one-line
  error naming the cause;
- optional requests-per-minute and tokens-per-minute caps;
- an optional persistent :class:`~surelabel.cache.ResponseCache`.

Structured output: ``response_format`` ``json_schema`` (strict) first; a server that rejects
it gets ``json_object`` with the schema attached (llama.cpp's extension), then plain
``json_object``, then the prompt alone. The level that worked is kept for later requests and
reported in ``Generation.info["response_format"]``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import json
import os
import random
import threading
import time
from collections import deque
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from surelabel.backends.base import (
    SAMPLES,
    SAMPLING_TEMPERATURE,
    Capabilities,
    Generation,
    ScoreResult,
    TokenLogprob,
)
from surelabel.cache import ResponseCache, request_key
from surelabel.errors import BackendError, UnsupportedMethodError, UserError
from surelabel.prompt import Message

T = TypeVar("T")

FORMATS = ("json_schema", "json_object_schema", "json_object", "prompt")
# Statuses worth retrying: timeouts, conflicts, rate limits and every server error.
RETRY_STATUS = frozenset({408, 409, 425, 429})
MAX_RETRY_AFTER = 120.0
# Cache entry of a request whose response_format the server rejected.
REJECTED = "surelabel_rejected_response_format"


class _FormatRejected(Exception):
    """The server does not accept the ``response_format`` sent."""


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` (seconds or HTTP date) or ``retry-after-ms``."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value) if value else None
        if when is None:
            return None
        return max(0.0, when.timestamp() - time.time())


def _is_format_rejection(status: int, message: str) -> bool:
    low = message.lower()
    return status in (400, 422, 500) and ("response_format" in low or "json_schema" in low)


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


class _RateLimiter:
    """Sliding one-minute window over request starts and their (estimated) tokens."""

    def __init__(self, rpm: int | None, tpm: int | None) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self._events: deque[list[float]] = deque()

    async def acquire(self, tokens: int) -> list[float] | None:
        if self.rpm is None and self.tpm is None:
            return None
        while True:
            now = time.monotonic()
            while self._events and now - self._events[0][0] >= 60.0:
                self._events.popleft()
            used = sum(e[1] for e in self._events)
            rpm_ok = self.rpm is None or len(self._events) < self.rpm
            tpm_ok = self.tpm is None or not self._events or used + tokens <= self.tpm
            if rpm_ok and tpm_ok:
                event = [now, float(tokens)]
                self._events.append(event)
                return event
            await asyncio.sleep(max(0.01, self._events[0][0] + 60.0 - now))

    @staticmethod
    def settle(event: list[float] | None, tokens: int) -> None:
        """Replace a request's estimate by the tokens it really used."""
        if event is not None and tokens > 0:
            event[1] = float(tokens)


class OpenAIBackend:
    """A model behind an OpenAI-compatible Chat Completions API.

    Parameters
    ----------
    model:
        Model name; ``None`` takes the first model the endpoint lists (local servers).
    client:
        A ready ``openai.OpenAI`` or ``openai.AsyncOpenAI`` client (Azure, proxies, tests).
        Its own retries are turned off: this backend retries.
    base_url, api_key, headers:
        Used to build a client when none is given. ``api_key`` defaults to
        ``$OPENAI_API_KEY``; a local ``base_url`` needs none.
    top_logprobs:
        Alternatives requested per token (OpenAI's maximum is 20); 0 asks for no logprobs.
    concurrency:
        Requests in flight at most.
    max_retries:
        Retries of one request on retryable failures.
    timeout:
        Seconds before one attempt is abandoned (and retried).
    max_rpm, max_tpm:
        Optional requests- and tokens-per-minute caps.
    cache:
        A :class:`~surelabel.cache.ResponseCache`, or ``None`` for no cache.
    response_format:
        The first structured-output level to try: ``json_schema``, ``json_object_schema``,
        ``json_object`` or ``prompt``.
    backoff:
        Base delay in seconds of the exponential backoff.
    samples, sampling_temperature:
        Answers drawn per item, and their temperature, for the ``sampling`` method.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        client: Any = None,
        base_url: str | None = None,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        top_logprobs: int = 20,
        concurrency: int = 8,
        max_retries: int = 8,
        timeout: float = 60.0,
        max_rpm: int | None = None,
        max_tpm: int | None = None,
        cache: ResponseCache | None = None,
        response_format: str = "json_schema",
        backoff: float = 0.5,
        samples: int = SAMPLES,
        sampling_temperature: float = SAMPLING_TEMPERATURE,
    ) -> None:
        try:
            import openai
        except ImportError as exc:
            raise UserError(
                "the openai backend needs the openai package: pip install 'surelabel[openai]'"
            ) from exc
        if response_format not in FORMATS:
            raise UserError(
                f"unknown response format {response_format!r}; expected one of {', '.join(FORMATS)}"
            )
        if concurrency < 1:
            raise UserError("--concurrency must be at least 1")
        if top_logprobs < 0:
            raise UserError("--top-logprobs must be 0 or more")
        self._openai = openai
        # A client built here is closed by close(); an injected one belongs to the caller.
        self._own_client = client is None
        if client is None:
            key = api_key or os.environ.get("OPENAI_API_KEY")
            if not key:
                if base_url is None:
                    raise UserError(
                        "no API key: set OPENAI_API_KEY or pass --api-key "
                        "(or --base-url for a local server)"
                    )
                key = "sk-no-key-required"
            client = openai.AsyncOpenAI(
                base_url=base_url,
                api_key=key,
                default_headers=dict(headers or {}),
                max_retries=0,
                timeout=timeout,
            )
        elif isinstance(client, (openai.OpenAI, openai.AsyncOpenAI)):
            client = client.with_options(max_retries=0, timeout=timeout)
        else:
            raise UserError("client must be an openai.OpenAI or openai.AsyncOpenAI instance")
        self._client = client
        self._async = isinstance(client, openai.AsyncOpenAI)
        self.endpoint = str(client.base_url).rstrip("/")
        self._model = model
        self.top_logprobs = top_logprobs
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.backoff = backoff
        self.cache = cache
        # Read by the ``sampling`` method.
        self.samples = samples
        self.sampling_temperature = sampling_temperature
        self._format_index = FORMATS.index(response_format)
        self._limiter = _RateLimiter(max_rpm, max_tpm)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._sem: asyncio.Semaphore | None = None
        self._start_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        # Counters: HTTP attempts sent, retries among them, answers served from the cache.
        self.stats = {"requests": 0, "retries": 0, "cache_hits": 0}

    # -- public interface -------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            exact_scoring=False,
            max_top_logprobs=self.top_logprobs,
            assistant_prefix=False,
            json_schema=True,
            sampling=True,
        )

    @property
    def model_name(self) -> str:
        if self._model is None:
            self._model = self._run(self._first_model())
        return self._model

    @property
    def response_format(self) -> str:
        """The structured-output level currently in use."""
        return FORMATS[self._format_index]

    def score(
        self,
        messages: Sequence[Message],
        prefix: str,
        continuations: Sequence[str],
        *,
        closer: str = "",
    ) -> ScoreResult:
        raise UnsupportedMethodError(
            "an OpenAI-compatible API cannot score given answers; use --method topk or sampling"
        )

    def generate(
        self,
        messages: Sequence[Message],
        *,
        prefix: str = "",
        schema: dict[str, Any] | None = None,
        max_tokens: int = 64,
        stop: Sequence[str] = (),
        top_logprobs: int = 0,
    ) -> Generation:
        """Greedy (temperature 0) answer with up to ``top_logprobs`` alternatives per token."""
        if prefix:
            raise UnsupportedMethodError("the openai backend cannot continue an assistant prefix")
        body = self._greedy_body(messages, max_tokens, stop, top_logprobs)
        return self._run(self._generate(body, schema))

    def _greedy_body(
        self, messages: Sequence[Message], max_tokens: int, stop: Sequence[str], top_logprobs: int
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": [m.as_dict() for m in messages],
            "temperature": 0,
            "max_tokens": max_tokens,
        }
        k = min(top_logprobs, self.top_logprobs)
        if k > 0:
            body["logprobs"] = True
            body["top_logprobs"] = k
        if stop:
            body["stop"] = list(stop)
        return body

    async def agenerate(
        self,
        messages: Sequence[Message],
        *,
        schema: dict[str, Any] | None = None,
        max_tokens: int = 64,
        stop: Sequence[str] = (),
        top_logprobs: int = 0,
    ) -> Generation:
        """:meth:`generate` for asyncio callers: awaitable from any event loop.

        The request still runs on the backend's own loop, under the same concurrency limit,
        rate caps, retries and cache as every other request.
        """
        body = self._greedy_body(messages, max_tokens, stop, top_logprobs)
        loop = self._ensure_loop()
        future = asyncio.run_coroutine_threadsafe(self._generate(body, schema), loop)
        return await asyncio.wrap_future(future)

    def sample(
        self,
        messages: Sequence[Message],
        *,
        n: int,
        temperature: float = SAMPLING_TEMPERATURE,
        schema: dict[str, Any] | None = None,
        max_tokens: int = 64,
    ) -> list[Generation]:
        """``n`` answers at ``temperature``, one request each with seed 0..n-1 (so cacheable)."""
        base = {
            "messages": [m.as_dict() for m in messages],
            "temperature": temperature,
            "max_tokens": max_tokens,
        }

        async def all_samples() -> list[Generation]:
            return list(
                await asyncio.gather(
                    *(self._generate({**base, "seed": i}, schema) for i in range(n))
                )
            )

        return self._run(all_samples())

    def close(self) -> None:
        """Stop the event loop thread, and close the HTTP client if this backend built it."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._own_client:
            asyncio.run_coroutine_threadsafe(self._client.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._loop = self._thread = None

    def __enter__(self) -> OpenAIBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- event loop -------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._ensure_loop()
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._start_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def main() -> None:
                    asyncio.set_event_loop(loop)
                    self._sem = asyncio.Semaphore(self.concurrency)
                    ready.set()
                    loop.run_forever()

                self._thread = threading.Thread(target=main, name="surelabel-openai", daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
                if not self._async:
                    self._executor = concurrent.futures.ThreadPoolExecutor(
                        max_workers=self.concurrency, thread_name_prefix="surelabel-http"
                    )
            return self._loop

    # -- requests ---------------------------------------------------------------------

    async def _first_model(self) -> str:
        try:
            if self._async:
                page = await self._client.models.list()
            else:
                assert self._executor is not None
                page = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._client.models.list
                )
            return str(page.data[0].id)
        except (self._openai.OpenAIError, IndexError, AttributeError) as exc:
            raise UserError(
                f"no --model given and {self.endpoint}/models lists none; pass --model NAME"
            ) from exc

    async def _generate(self, body: dict[str, Any], schema: dict[str, Any] | None) -> Generation:
        while True:
            level = self._format_index if schema is not None else len(FORMATS) - 1
            full = dict(body)
            fmt = FORMATS[level]
            if fmt == "json_schema":
                full["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "answer", "strict": True, "schema": schema},
                }
            elif fmt == "json_object_schema":
                full["response_format"] = {"type": "json_object", "schema": schema}
            elif fmt == "json_object":
                full["response_format"] = {"type": "json_object"}
            try:
                data, cached = await self._request(full)
            except _FormatRejected:
                if level >= len(FORMATS) - 1:
                    raise BackendError("the server rejected every response format") from None
                # Several requests may fail at once; move down one level only once.
                if self._format_index == level:
                    self._format_index = level + 1
                continue
            gen = parse_response(data)
            info = {**gen.info, "response_format": fmt, "cached": cached}
            return Generation(gen.text, gen.tokens, gen.finish_reason, gen.usage, info)

    async def _request(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """One request, from the cache or the server, with retries. Returns (response, cached)."""
        if self._model is None:
            self._model = await self._first_model()
        model = self._model
        body = {"model": model, **body}
        key = request_key(self.endpoint, model, body)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                with self._stats_lock:
                    self.stats["cache_hits"] += 1
                if REJECTED in hit:
                    raise _FormatRejected(hit[REJECTED])
                return hit, True
        assert self._sem is not None
        estimate = len(json.dumps(body["messages"])) // 4 + int(body.get("max_tokens") or 0)
        async with self._sem:
            attempt = 0
            while True:
                event = await self._limiter.acquire(estimate)
                with self._stats_lock:
                    self.stats["requests"] += 1
                    if attempt:
                        self.stats["retries"] += 1
                try:
                    data = await self._send(body)
                except self._openai.APIStatusError as exc:
                    error, wait = self._status_error(exc)
                except (self._openai.APITimeoutError, self._openai.APIConnectionError) as exc:
                    timed_out = isinstance(exc, self._openai.APITimeoutError)
                    kind = "timed out" if timed_out else "failed"
                    error = BackendError(
                        f"request to {self.endpoint} {kind}: {_one_line(str(exc))}", retryable=True
                    )
                    wait = None
                else:
                    used = int((data.get("usage") or {}).get("total_tokens") or 0)
                    self._limiter.settle(event, used)
                    if self.cache is not None:
                        self.cache.put(key, self.endpoint, model, data)
                    return data, False
                if isinstance(error, _FormatRejected) and self.cache is not None:
                    # Remembered, so a rerun from the cache makes no request at all.
                    self.cache.put(key, self.endpoint, model, {REJECTED: str(error)})
                if not getattr(error, "retryable", False) or attempt >= self.max_retries:
                    if isinstance(error, BackendError) and error.retryable:
                        raise BackendError(
                            f"{error} (gave up after {attempt + 1} attempts)", retryable=True
                        )
                    raise error
                delay = self.backoff * (2**attempt)
                delay = min(delay, 30.0) + random.uniform(0, self.backoff)
                if wait is not None:
                    delay = max(delay, min(wait, MAX_RETRY_AFTER))
                attempt += 1
                await asyncio.sleep(delay)

    async def _send(self, body: dict[str, Any]) -> dict[str, Any]:
        if self._async:
            resp = await self._client.chat.completions.create(**body)
        else:
            assert self._executor is not None
            resp = await asyncio.get_running_loop().run_in_executor(
                self._executor, lambda: self._client.chat.completions.create(**body)
            )
        data: dict[str, Any] = resp.model_dump(mode="json")
        return data

    def _status_error(self, exc: Any) -> tuple[Exception, float | None]:
        """Map an HTTP error to (error, Retry-After seconds)."""
        status = int(exc.status_code)
        message = _one_line(getattr(exc, "message", "") or str(exc))
        response = getattr(exc, "response", None)
        try:
            body = response.text if response is not None else ""
        except Exception:  # a streamed or closed body: the message is enough
            body = ""
        if _is_format_rejection(status, f"{message} {body}"):
            return _FormatRejected(message), None
        where = f"{self.endpoint} (model {self._model!r})"
        if status == 401:
            return UserError(f"authentication failed (401) at {where}: check --api-key / "
                             f"OPENAI_API_KEY: {message}"), None
        if status == 403:
            return UserError(f"permission denied (403) at {where}: {message}"), None
        if status == 404:
            return UserError(f"not found (404) at {where}: unknown model or wrong --base-url: "
                             f"{message}"), None
        retryable = status in RETRY_STATUS or status >= 500
        headers = response.headers if response is not None else None
        return (
            BackendError(f"HTTP {status} from {where}: {message}", retryable=retryable),
            _retry_after(headers) if retryable else None,
        )
