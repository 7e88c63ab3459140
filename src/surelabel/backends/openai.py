"""Any OpenAI-compatible Chat Completions endpoint: OpenAI, Azure, vLLM, llama.cpp, Ollama...

An API cannot teacher-force labels, so this backend declares ``exact_scoring=False`` and
reports the ``top_logprobs`` alternatives of each generated token; :mod:`surelabel.topk`
turns them into a label distribution. Where a server returns no logprobs, the ``sampling``
method draws several answers at a temperature instead (:meth:`OpenAIBackend.sample`).

What goes over the wire is built and read in :mod:`surelabel.backends._openai_wire`; this
module is the transport. Every request goes through one asyncio event loop on a private
thread (started on first use, so a backend rebuilt from its spec in a worker opens nothing
until asked):

- the openai SDK sends it and retries it: 408, 409, 429, 5xx, timeouts and dropped
  connections, with exponential backoff and jitter, honouring ``Retry-After`` /
  ``retry-after-ms`` and ``x-should-retry`` (``max_retries``);
- a semaphore bounds the requests in flight (``concurrency``); callers in many threads
  (the CLI's batch path) and asyncio callers (:meth:`OpenAIBackend.agenerate`) share it;
- optional requests- and tokens-per-minute caps (:mod:`surelabel.backends._ratelimit`);
- an optional persistent :class:`~surelabel.cache.ResponseCache`;
- 400/401/403/404 fail with a one-line error naming the cause; an error that reaches the
  caller says whether retrying later can help (``retryable``).

Structured output: ``response_format`` ``json_schema`` (strict) first; a server that rejects
it gets ``json_object`` with the schema attached (llama.cpp's extension), then plain
``json_object``, then the prompt alone. The level that worked is kept for later requests and
reported in ``Generation.info["response_format"]``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import threading
from collections.abc import Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from surelabel.backends._openai_wire import (
    FORMATS,
    estimate_tokens,
    greedy_body,
    is_format_rejection,
    parse_response,
    sample_bodies,
    with_format,
)
from surelabel.backends._ratelimit import MinuteWindow, RateLimiter
from surelabel.backends.base import (
    SAMPLES,
    SAMPLING_TEMPERATURE,
    BaseBackend,
    Capabilities,
    Generation,
)
from surelabel.cache import ResponseCache, open_cache, request_key
from surelabel.errors import BackendError, UnsupportedMethodError, UserError
from surelabel.prompt import Message

if TYPE_CHECKING:
    import openai

__all__ = ["FORMATS", "OpenAIBackend", "parse_response"]

T = TypeVar("T")

OPENAI_BASE_URL = "https://api.openai.com/v1"
MAX_RETRIES = 8
TIMEOUT = 60.0
# Sent as the key to servers that want none (the SDK refuses to build a client without one).
NO_KEY = "sk-no-key-required"
# Cache entry of a request whose response_format the server rejected.
REJECTED = "surelabel_rejected_response_format"


class _FormatRejected(Exception):
    """The server does not accept the ``response_format`` sent."""


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _needs_key(base_url: str) -> bool:
    """Only OpenAI's own API needs a key; any other server gets one only when given."""
    return (urlsplit(base_url).hostname or "").lower() == "api.openai.com"


async def _no_retry_on_format_rejection(response: Any) -> None:
    """httpx response hook: a 500 that only says the ``response_format`` is not supported
    (llama-cpp-python's server answers so) gets ``x-should-retry: false``, the header by
    which a server tells the SDK not to retry; the backend then moves down the formats."""
    if response.status_code != 500:
        return
    await response.aread()
    if is_format_rejection(500, response.text):
        response.headers["x-should-retry"] = "false"


def _attempts(exc: BaseException) -> int:
    """HTTP attempts behind an SDK error: the SDK numbers each in ``x-stainless-retry-count``."""
    request = getattr(exc, "request", None)
    try:
        return int(request.headers.get("x-stainless-retry-count", 0)) + 1  # type: ignore[union-attr]
    except (AttributeError, TypeError, ValueError):
        return 1


def _retryable(response: Any) -> bool:
    """Whether the SDK would retry this response (its ``_should_retry``, public rules only)."""
    flag = response.headers.get("x-should-retry")
    if flag in ("true", "false"):
        return bool(flag == "true")
    status = int(response.status_code)
    return status in (408, 409, 429) or status >= 500


class OpenAIBackend(BaseBackend):
    """A model behind an OpenAI-compatible Chat Completions API.

    Parameters
    ----------
    model:
        Model name; ``None`` takes the first model the endpoint lists (local servers).
    client:
        A ready ``openai.OpenAI`` or ``openai.AsyncOpenAI`` client (Azure, proxies, tests).
        Its own retry and timeout settings apply unless ``max_retries`` / ``timeout`` are
        given. A backend built on a client has no spec and does not pickle.
    base_url, api_key, headers:
        Used to build a client when none is given. ``base_url`` defaults to
        ``$OPENAI_BASE_URL``, else OpenAI's API; ``api_key`` to ``$OPENAI_API_KEY``. Only
        OpenAI's own API needs a key.
    top_logprobs:
        Alternatives requested per token (OpenAI's maximum is 20); 0 asks for no logprobs.
    concurrency:
        Requests in flight at most (each with its retries).
    max_retries:
        Retries of one request by the SDK (default 8).
    timeout:
        Seconds before one attempt is abandoned (and retried); default 60.
    max_rpm, max_tpm:
        Optional requests- and tokens-per-minute caps.
    cache:
        Where responses are kept: ``None`` or ``False`` nowhere, ``True`` the default file
        (:func:`~surelabel.cache.default_cache_path`), a path, or a
        :class:`~surelabel.cache.ResponseCache` (then the backend has no spec).
    response_format:
        The first structured-output level to try: ``json_schema``, ``json_object_schema``,
        ``json_object`` or ``prompt``.
    samples, sampling_temperature:
        Accepted for older callers and kept as attributes; the ``sampling`` method takes
        them from its own options and passes them to :meth:`sample`.
    """

    name = "openai"

    def __init__(
        self,
        model: str | None = None,
        *,
        client: openai.OpenAI | openai.AsyncOpenAI | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        top_logprobs: int = 20,
        concurrency: int = 8,
        max_retries: int | None = None,
        timeout: float | None = None,
        max_rpm: int | None = None,
        max_tpm: int | None = None,
        cache: ResponseCache | str | os.PathLike[str] | bool | None = None,
        response_format: str = "json_schema",
        samples: int | None = None,
        sampling_temperature: float | None = None,
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
        if max_retries is not None and max_retries < 0:
            raise UserError("max_retries must be 0 or more")
        for flag, cap in (("--max-rpm", max_rpm), ("--max-tpm", max_tpm)):
            if cap is not None and cap < 1:
                raise UserError(f"{flag} must be at least 1")
        if client is not None and not isinstance(client, (openai.OpenAI, openai.AsyncOpenAI)):
            raise UserError("client must be an openai.OpenAI or openai.AsyncOpenAI instance")
        try:
            self.cache = open_cache(cache)
        except TypeError as exc:
            raise UserError(str(exc)) from None

        self._model = model
        self.top_logprobs = top_logprobs
        self.concurrency = concurrency
        self.samples = SAMPLES if samples is None else samples
        self.sampling_temperature = (
            SAMPLING_TEMPERATURE if sampling_temperature is None else sampling_temperature
        )
        self.limiter: RateLimiter | None = (
            MinuteWindow(max_rpm, max_tpm) if max_rpm is not None or max_tpm is not None else None
        )
        self._format_index = FORMATS.index(response_format)

        # A client built here is made on first use and closed by close(); an injected one
        # belongs to the caller.
        self._own_client = client is None
        self._client: Any = None
        self._client_options: dict[str, Any] = {}
        if client is None:
            url = base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL
            key = api_key or os.environ.get("OPENAI_API_KEY")
            if not key:
                if _needs_key(url):
                    raise UserError(
                        "no API key: set OPENAI_API_KEY or pass --api-key "
                        "(a --base-url or OPENAI_BASE_URL of another server needs none)"
                    )
                key = NO_KEY
            self.max_retries = MAX_RETRIES if max_retries is None else max_retries
            self.timeout: Any = TIMEOUT if timeout is None else timeout
            self._client_options = {
                "base_url": url,
                "api_key": key,
                "default_headers": dict(headers or {}),
                "max_retries": self.max_retries,
                "timeout": self.timeout,
            }
            self.endpoint = url.rstrip("/")
        else:
            if base_url is not None or api_key is not None or headers:
                raise UserError("pass either a client or base_url / api_key / headers, not both")
            changes: dict[str, Any] = {}
            if max_retries is not None:
                changes["max_retries"] = max_retries
            if timeout is not None:
                changes["timeout"] = timeout
            self._client = client.with_options(**changes) if changes else client
            self.max_retries = int(self._client.max_retries)
            self.timeout = self._client.timeout
            self.endpoint = str(client.base_url).rstrip("/")
        self._async = client is None or isinstance(client, openai.AsyncOpenAI)

        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._sem: asyncio.Semaphore | None = None
        self._start_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        # Counters: HTTP attempts sent (retries included), retries among them, answers
        # served from the cache.
        self.stats = {"requests": 0, "retries": 0, "cache_hits": 0}

        if client is None and not isinstance(cache, ResponseCache):
            self._remember(
                model=model,
                base_url=base_url,
                # A key read from the environment stays there: the rebuilt backend reads it
                # again, and a spec may be logged or sent to workers.
                api_key=api_key if api_key and api_key != os.environ.get("OPENAI_API_KEY")
                else None,
                headers=dict(headers) if headers else None,
                top_logprobs=top_logprobs,
                concurrency=concurrency,
                max_retries=max_retries,
                timeout=timeout,
                max_rpm=max_rpm,
                max_tpm=max_tpm,
                cache=None if cache is None or cache is False else cache,
                response_format=response_format,
                samples=samples,
                sampling_temperature=sampling_temperature,
            )

    # -- public interface -------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            exact_scoring=False,
            max_top_logprobs=self.top_logprobs,
            assistant_prefix=False,
            json_schema=True,
            sampling=True,
            concurrency=self.concurrency,
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
        k = min(top_logprobs, self.top_logprobs)
        body = greedy_body(messages, max_tokens=max_tokens, stop=stop, top_logprobs=k)
        return self._run(self._generate(body, schema))

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
        k = min(top_logprobs, self.top_logprobs)
        body = greedy_body(messages, max_tokens=max_tokens, stop=stop, top_logprobs=k)
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
        bodies = sample_bodies(messages, n=n, temperature=temperature, max_tokens=max_tokens)

        async def all_samples() -> list[Generation]:
            return list(await asyncio.gather(*(self._generate(b, schema) for b in bodies)))

        return self._run(all_samples())

    def close(self) -> None:
        """Stop the event loop thread, and close the HTTP client if this backend built it."""
        with self._start_lock:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None:
                return
            if self._own_client and self._client is not None:
                asyncio.run_coroutine_threadsafe(self._client.close(), loop).result(timeout=10)
                self._client = None
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
            self._loop = self._thread = self._executor = self._sem = None

    def __enter__(self) -> OpenAIBackend:
        return self

    # -- event loop -------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._ensure_loop()
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._start_lock:
            if self._loop is None:
                if self._client is None:
                    self._client = self._build_client()
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

    def _build_client(self) -> Any:
        import openai

        http = openai.DefaultAsyncHttpxClient(
            event_hooks={"response": [_no_retry_on_format_rejection]}
        )
        return openai.AsyncOpenAI(**self._client_options, http_client=http)

    # -- requests ---------------------------------------------------------------------

    async def _first_model(self) -> str:
        import openai

        try:
            if self._async:
                page = await self._client.models.list()
            else:
                page = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._client.models.list
                )
            return str(page.data[0].id)
        except (openai.OpenAIError, IndexError, AttributeError) as exc:
            raise UserError(
                f"no --model given and {self.endpoint}/models lists none; pass --model NAME"
            ) from exc

    async def _generate(self, body: dict[str, Any], schema: dict[str, Any] | None) -> Generation:
        while True:
            level = self._format_index if schema is not None else len(FORMATS) - 1
            fmt = FORMATS[level]
            try:
                data, cached = await self._request(with_format(body, fmt, schema))
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
        """One request, from the cache or the server (the SDK retrying it).

        Returns (response, cached)."""
        import openai

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
        async with self._sem:
            limiter = self.limiter
            ticket = None if limiter is None else await limiter.acquire(estimate_tokens(body))
            attempts, used = 1, 0
            try:
                raw = await self._create(body)
                attempts = int(raw.retries_taken) + 1
                parsed = raw.parse()
                if not hasattr(parsed, "model_dump"):  # the SDK gives a text body as str
                    raise ValueError(f"not a JSON completion: {str(parsed)[:80]!r}")
                data: dict[str, Any] = parsed.model_dump(mode="json")
                used = int((data.get("usage") or {}).get("total_tokens") or 0)
            except openai.APIError as exc:
                attempts = _attempts(exc)
                error = self._error(exc, attempts)
                if isinstance(error, _FormatRejected) and self.cache is not None:
                    # Remembered, so a rerun from the cache makes no request at all.
                    self.cache.put(key, self.endpoint, model, {REJECTED: str(error)})
                raise error from exc
            except ValueError as exc:  # a 200 whose body is not a completion
                raise BackendError(
                    f"unreadable response from {self.endpoint}: {_one_line(str(exc))}"
                ) from exc
            finally:
                with self._stats_lock:
                    self.stats["requests"] += attempts
                    self.stats["retries"] += attempts - 1
                if limiter is not None:
                    limiter.settle(ticket, tokens=used, requests=attempts)
        if self.cache is not None:
            self.cache.put(key, self.endpoint, model, data)
        return data, False

    async def _create(self, body: dict[str, Any]) -> Any:
        """``chat.completions.create`` through the SDK (its retries inside), raw response."""
        create = self._client.chat.completions.with_raw_response.create
        if self._async:
            return await create(**body)
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(create, **body)
        )

    def _error(self, exc: Exception, attempts: int) -> Exception:
        """The error the caller sees for an SDK error, after ``attempts`` HTTP attempts."""
        import openai

        gave_up = f" (gave up after {attempts} attempt{'s' if attempts != 1 else ''})"
        where = f"{self.endpoint} (model {self._model!r})"
        if isinstance(exc, openai.APIStatusError):
            status = int(exc.status_code)
            message = _one_line(getattr(exc, "message", "") or str(exc))
            try:
                body = exc.response.text
            except Exception:  # a streamed or closed body: the message is enough
                body = ""
            if is_format_rejection(status, f"{message} {body}"):
                return _FormatRejected(message)
            if status == 401:
                return UserError(f"authentication failed (401) at {where}: check --api-key / "
                                 f"OPENAI_API_KEY: {message}")
            if status == 403:
                return UserError(f"permission denied (403) at {where}: {message}")
            if status == 404:
                return UserError(f"not found (404) at {where}: unknown model or wrong "
                                 f"--base-url: {message}")
            retryable = _retryable(exc.response)
            text = f"HTTP {status} from {where}: {message}"
            return BackendError(text + gave_up if retryable else text, retryable=retryable)
        if isinstance(exc, openai.APITimeoutError):
            return BackendError(f"request to {self.endpoint} timed out{gave_up}", retryable=True)
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__
            why = _one_line(str(cause) or type(cause).__name__) if cause else _one_line(str(exc))
            return BackendError(f"request to {self.endpoint} failed: {why}{gave_up}",
                                retryable=True)
        return BackendError(f"bad response from {where}: {_one_line(str(exc))}")
