"""The OpenAI backend against a real OpenAI-compatible server: llama-cpp-python's.

``python -m llama_cpp.server`` serves the bundled SmolLM2 GGUF on 127.0.0.1; nothing here
mocks it. Faults are injected by a small loopback proxy in front of it. In the default tier
they are chosen by request count (every third chat request answers 429 with Retry-After, 500,
or resets the connection, in turn) and a job is stopped where the test wants it by holding
the requests of its later rows, so nothing depends on how fast the machine is. The slow tier
keeps the real-time version: hangs that the client's timeout must cut, and a kill at
whatever point the job has reached.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from support import free_port
from surelabel.backends.openai import OpenAIBackend
from surelabel.cache import ResponseCache
from surelabel.classifier import Classifier
from surelabel.cli import main
from surelabel.errors import BackendError, UserError
from surelabel.methods import MethodOptions
from surelabel.task import load_task

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
DATA = REPO.parent / "shared" / "data"

pytestmark = pytest.mark.model


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m llama_cpp.server`` with the bundled model, on a free loopback port."""
    from surelabel.backends.llamacpp import default_model_path

    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(default_model_path()),
             "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port),
             "--n_ctx", "2048", "--n_threads", "1", "--n_threads_batch", "1",
             "--verbose", "False"],
            stdout=fh, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llama_cpp.server did not become ready in 120 s")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hang up on hung or reset requests: that is the point, not an error.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


#: A tiny chat request whose prompt shares only its first token with any real one.
CLEANSER = json.dumps({
    "model": "smollm2", "messages": [{"role": "user", "content": "."}], "max_tokens": 1,
}).encode()
# What the server last answered before a proxy started (other tests use it directly).
_UNKNOWN = object()


class FaultProxy:
    """A loopback HTTP proxy that fails chat requests on purpose.

    The faults come from one of:

    - ``every``: the ``every``-th, ``2 * every``-th, ... chat request gets the next fault of
      ``cycle`` (by arrival count, never by time);
    - ``rates``: a seeded fraction of requests, the fault depending only on the seed, the
      request body and how many times that body was seen (reproducible whatever the
      arrival order);
    - ``status``: every chat request gets that HTTP status.

    A body fails at most ``max_faults`` times, so a client that retries more than that
    always finishes. :meth:`hold` makes the requests of some rows wait, unanswered, until
    :meth:`release`: a job that cannot get past a given row.
    """

    KINDS = ("429", "500", "hang", "reset")

    def __init__(
        self,
        upstream: str,
        *,
        every: int | None = None,
        cycle: tuple[str, ...] = ("429", "500", "reset"),
        seed: int = 0,
        rates: dict[str, float] | None = None,
        status: int | None = None,
        max_faults: int = 3,
        hang_seconds: float = 4.0,
    ) -> None:
        rest = upstream.split("://", 1)[1]
        hostport = rest.split("/", 1)[0]
        self.host, port = hostport.split(":")
        self.port = int(port)
        self.every = every
        self.cycle = cycle
        self.seed = seed
        self.rates = rates or {}
        self.status = status
        self.max_faults = max_faults
        self.hang_seconds = hang_seconds
        self.lock = threading.Lock()
        self.forward_lock = threading.Lock()
        self.last_answered: Any = _UNKNOWN
        self.seen: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self.held: frozenset[str] = frozenset()
        self.released = threading.Event()
        self.counts = {"requests": 0, "forwarded": 0, "held": 0, **{k: 0 for k in self.KINDS}}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy.forward(self, b"")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.handle(self, body)

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def hold(self, texts: list[str]) -> None:
        """Requests whose last message is one of ``texts`` wait until :meth:`release`."""
        self.released.clear()
        self.held = frozenset(texts)

    def release(self) -> None:
        """Stop holding; held requests are dropped unanswered (their client is gone)."""
        self.held = frozenset()
        self.released.set()

    def fault_for(self, body: bytes) -> str | None:
        digest = hashlib.sha256(body).hexdigest()
        with self.lock:
            self.counts["requests"] += 1
            count = self.counts["requests"]
            n = self.seen.get(digest, 0)
            self.seen[digest] = n + 1
            if self.status is not None:
                return str(self.status)
            if self.every is not None:
                if count % self.every or self.failed.get(digest, 0) >= self.max_faults:
                    return None
                self.failed[digest] = self.failed.get(digest, 0) + 1
                return self.cycle[(count // self.every - 1) % len(self.cycle)]
        if n >= self.max_faults:
            return None
        rng = random.Random(f"{self.seed}:{digest}:{n}")
        x = rng.random()
        for kind in self.KINDS:
            x -= self.rates.get(kind, 0.0)
            if x < 0:
                return kind
        return None

    def handle(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        if self.held and _last_message(body) in self.held:
            with self.lock:
                self.counts["held"] += 1
            self.released.wait()
            h.close_connection = True
            return
        fault = self.fault_for(body)
        if fault is None:
            self.forward(h, body)
            return
        with self.lock:
            self.counts[fault if fault in self.counts else "500"] += 1
        if fault == "hang":
            time.sleep(self.hang_seconds)
            h.close_connection = True
            return
        if fault == "reset":
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
            h.close_connection = True
            return
        code = int(fault)
        payload = json.dumps({"error": {"message": f"injected fault {code}"}}).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload)))
        if code == 429:
            h.send_header("Retry-After", "1")
        h.end_headers()
        h.wfile.write(payload)

    def _send(self, method: str, path: str, body: bytes, content_type: str) -> tuple[Any, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=300)
        conn.request(method, path, body=body or None, headers={"Content-Type": content_type})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp, data

    def forward(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        content_type = h.headers.get("Content-Type", "application/json")
        if h.command != "POST":
            resp, data = self._send(h.command, h.path, body, content_type)
        else:
            # llama_cpp.server keeps the last prompt it answered in its KV cache and
            # answers the identical prompt sent again (a retry after a client timeout, or
            # a row resent after a kill) from a one-token replay, whose logprobs differ
            # (`python bench/numerics.py --part repeat`: 2 of 5 prompts got another answer
            # at temperature 0). That is the server's nondeterminism, not the
            # client's, so such a repeat here first replaces the cached prompt with an
            # unrelated one. (Other prompts reuse the shared prefix with identical results.)
            try:
                messages = json.loads(body).get("messages")
            except ValueError:
                messages = None
            with self.forward_lock:
                if self.last_answered is _UNKNOWN or messages == self.last_answered:
                    self._send("POST", h.path, CLEANSER, "application/json")
                resp, data = self._send("POST", h.path, body, content_type)
                self.last_answered = messages if resp.status == 200 else self.last_answered
        with self.lock:
            self.counts["forwarded"] += 1
        h.send_response(resp.status)
        h.send_header("Content-Type", resp.getheader("Content-Type") or "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def close(self) -> None:
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()


def _last_message(body: bytes) -> str | None:
    try:
        messages = json.loads(body).get("messages") or [{}]
        return str(messages[-1].get("content"))
    except (ValueError, AttributeError, TypeError):
        return None


#: Seconds before the client abandons an attempt in the real-time runs: well above the
#: queueing at the server (one request at a time, 4 in flight) on a loaded machine, below
#: the proxy's hang.
TIMEOUT_S = 30.0


@pytest.fixture
def proxy(server_url: str) -> Iterator[FaultProxy]:
    """Faults by request count: every third chat request fails (429, 500, reset in turn),
    a body at most twice, so the backend's retries cannot run out."""
    p = FaultProxy(server_url, every=3, max_faults=2)
    yield p
    p.close()


@pytest.fixture
def realtime_proxy(server_url: str) -> Iterator[FaultProxy]:
    """Seeded faults including hangs, which only the client's timeout ends."""
    p = FaultProxy(
        server_url, seed=7, rates={"429": 0.1, "500": 0.1, "hang": 0.03, "reset": 0.07},
        hang_seconds=TIMEOUT_S + 10,
    )
    yield p
    p.close()


FOOD = ["tomato", "cucumber", "lemon", "basil", "apple", "carrot", "mint", "banana"]
PIZZA = ["cheese pizza", "Hawaiian pizza", "Supreme pizza", "pineapple upside-down cake",
         "green salad", "ham and pineapple skewers"]


def _backend(url: str, **kw: Any) -> OpenAIBackend:
    return OpenAIBackend("smollm2", base_url=url, **kw)


def test_openai_backend_contract(server_url: str) -> None:
    """The backend contract (tests/test_backend_contract.py) against the real server."""
    from test_backend_contract import check_backend

    with _backend(server_url, cache=False) as b:
        check_backend("openai", b)


def test_classify_through_the_server(server_url: str) -> None:
    task = load_task(EXAMPLES / "fruit_veg_herb.yaml")
    with _backend(server_url) as b:
        clf = Classifier(task, b, reason=True)
        assert clf.method == "topk"
        records = [clf.classify_one(text, i).to_dict() for i, text in enumerate(FOOD[:4])]
        assert b.stats["requests"] >= 4
        # The server's 500 rejecting json_schema is not retried (see the backend's hook).
        assert b.stats["retries"] == 0
    for r in records:
        assert r["error"] is None, r
        assert r["label"] in task.label_names
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert 0 < r["label_mass"] <= 1
        assert r["confidence_source"] == "logprobs"
        # llama.cpp's server rejects json_schema; the schema rides along json_object.
        assert r["response_format"] == "json_object_schema"
        assert r["usage"]["prompt_tokens"] > 0 and r["usage"]["completion_tokens"] > 0
        assert isinstance(r["reason"], str)


def test_openai_base_url_needs_no_key(
    server_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Regression: $OPENAI_BASE_URL naming a local server failed with "no API key", while
    # --base-url with the same URL worked.
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", server_url)
    items = tmp_path / "items.txt"
    items.write_text("cheese pizza\n")
    out = tmp_path / "out.jsonl"
    code = main(["classify", str(EXAMPLES / "pineapple.yaml"), str(items), "-o", str(out),
                 "--backend", "openai", "--model", "smollm2", "--no-reason", "--no-cache", "-q"])
    assert code == 0, capsys.readouterr().err
    [record] = _records(out)
    assert record["error"] is None and record["label"] in ("true", "false")


def _compare(task_file: str, texts: list[str], server_url: str, local: Any) -> list[float]:
    task = load_task(EXAMPLES / task_file)
    # Both raw: debiasing (on by default for exact only) would move exact away from top-k.
    raw = MethodOptions(debias=False)
    exact = Classifier(task, local, method="exact", reason=False, options=raw)
    gaps = []
    with _backend(server_url) as b:
        api = Classifier(task, b, method="topk", reason=False, options=raw)
        for text in texts:
            e = exact.run_method(text).distribution
            a = api.run_method(text).distribution
            assert e is not None and a is not None
            gaps.append(max(abs(x - y) for x, y in zip(e.probabilities, a.probabilities)))
    return gaps


def test_topk_agrees_with_exact_on_boolean_labels(server_url: str, backend: Any) -> None:
    # ` true`/` false` are single tokens after the same prefix: top-k sees the whole labels.
    # What remains is numeric (the server's own evaluation of the prompt; not broken down
    # further), and top-k also counts `true` without a space.
    gaps = _compare("pineapple.yaml", PIZZA[:3], server_url, backend)
    assert max(gaps) < 0.05, gaps


def test_topk_close_to_exact_on_multi_token_labels(server_url: str, backend: Any) -> None:
    # "vegetable" is veget+able: off the generated path only `veget` is visible, an upper
    # bound; the exact scorer also multiplies in each label's closing-quote probability.
    # Both make a small gap (documented in docs/openai.md).
    gaps = _compare("fruit_veg_herb.yaml", FOOD[:3], server_url, backend)
    assert max(gaps) < 0.15, gaps


def test_sampling_when_the_server_gives_no_logprobs(server_url: str) -> None:
    task = load_task(EXAMPLES / "pineapple.yaml")
    with _backend(server_url, top_logprobs=0) as b:
        clf = Classifier(task, b, reason=False, options=MethodOptions(samples=4))
        assert clf.method == "sampling"
        r = clf.classify_one("Hawaiian pizza").to_dict()
    assert r["error"] is None
    assert r["confidence_source"] == "sampling"
    assert r["samples"] == 4
    # Vote shares with add-one smoothing over 2 labels: (votes + 1) / (4 + 2).
    votes = r["probabilities"]["true"] * 6 - 1
    assert votes == pytest.approx(round(votes), abs=1e-4)


@pytest.mark.parametrize(("status", "error", "words"), [
    (401, UserError, "authentication failed"),
    (403, UserError, "permission denied"),
    (404, UserError, "unknown model"),
    (400, BackendError, "HTTP 400"),
])
def test_no_retry_on_client_errors(
    server_url: str, status: int, error: type[Exception], words: str
) -> None:
    p = FaultProxy(server_url, status=status)
    try:
        with _backend(p.url) as b:
            clf = Classifier(load_task(EXAMPLES / "pineapple.yaml"), b, reason=False)
            with pytest.raises(error, match=words) as info:
                clf.run_method("cheese pizza")
        assert "\n" not in str(info.value)
        assert p.counts["requests"] == 1
    finally:
        p.close()


def test_server_errors_are_retried_until_they_pass(server_url: str) -> None:
    p = FaultProxy(server_url, every=1, cycle=("500",), max_faults=2)
    try:
        with _backend(p.url, response_format="json_object_schema") as b:
            clf = Classifier(load_task(EXAMPLES / "pineapple.yaml"), b, reason=False)
            r = clf.classify_one("cheese pizza").to_dict()
            assert b.stats["retries"] == 2 and b.stats["requests"] == 3
        assert r["error"] is None
        assert p.counts["500"] == 2 and p.counts["forwarded"] == 1
    finally:
        p.close()


def _write_items(path: Path, n: int) -> list[str]:
    foods = [json.loads(line)["text"] for line in (DATA / "usda_food_groups.jsonl").open()]
    step = max(1, len(foods) // n)
    texts = [foods[(i * step) % len(foods)] for i in range(n)]
    with path.open("w") as fh:
        for i, text in enumerate(texts):
            fh.write(json.dumps({"id": f"r{i}", "text": text}) + "\n")
    return texts


def _cli_args(items: Path, out: Path, url: str, *, timeout: float) -> list[str]:
    return [
        "classify", str(EXAMPLES / "fruit_veg_herb.yaml"), str(items), "-o", str(out),
        "--backend", "openai", "--base-url", url, "--model", "smollm2", "--no-reason",
        "--concurrency", "4", "--timeout", str(timeout), "-q",
    ]


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def _wait_for_lines(path: Path, proc: subprocess.Popen[bytes], lines: int) -> None:
    """Until ``path`` holds ``lines`` lines (a condition, not a duration: the deadline is
    only there so that a broken run fails instead of hanging)."""
    deadline = time.monotonic() + 500
    while _lines(path) < lines:
        assert proc.poll() is None, f"the run exited ({proc.returncode}) before row {lines}"
        assert time.monotonic() < deadline, f"no {lines} rows in {path} after 500 s"
        time.sleep(0.05)


def _fault_run(
    tmp_path: Path, proxy: FaultProxy, n: int, monkeypatch: pytest.MonkeyPatch, *,
    realtime: bool,
) -> None:
    """Faults, kill -9, resume and a cached rerun of one job of ``n`` rows.

    ``realtime=False``: the faults come by request count and the killed run is held at row
    ``n // 3`` by the proxy, so every step happens whatever the machine's speed. ``True``:
    the proxy also hangs requests (the client's timeout must end them) and the run is
    killed wherever it has got to once a third of the rows are written.
    """
    timeout = TIMEOUT_S if realtime else 600.0
    items = tmp_path / "items.jsonl"
    texts = _write_items(items, n)
    out = tmp_path / "out.jsonl"
    monkeypatch.setenv("SURELABEL_CACHE_DIR", str(tmp_path / "cache-a"))
    assert main(_cli_args(items, out, proxy.url, timeout=timeout)) == 0
    records = _records(out)
    assert [r["id"] for r in records] == [f"r{i}" for i in range(n)]
    assert [r["error"] for r in records] == [None] * n
    faults = sum(proxy.counts[k] for k in FaultProxy.KINDS)
    assert faults > 0 and proxy.counts["429"] + proxy.counts["500"] > 0

    # Kill -9 a second run (own cache, so it really asks the server), tear its last line,
    # resume: the result equals the uninterrupted run.
    out2 = tmp_path / "out2.jsonl"
    env = {**os.environ, "SURELABEL_CACHE_DIR": str(tmp_path / "cache-b")}
    cmd = [sys.executable, "-c", "from surelabel.cli import entry; entry()",
           *_cli_args(items, out2, proxy.url, timeout=timeout)]
    target = max(2, n // 3)
    if not realtime:
        assert len(set(texts)) == n, "rows must differ for the proxy to hold the later ones"
        proxy.hold(texts[target:])
    proc = subprocess.Popen(cmd, env=env)
    try:
        _wait_for_lines(out2, proc, target)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proxy.release()
    done = _lines(out2)
    assert 0 < done < n, "the run finished before it could be killed; use more rows"
    if not realtime:
        assert done == target and proxy.counts["held"] > 0
    with out2.open("a") as fh:
        fh.write('{"id": "r')  # a line torn by the kill
    assert subprocess.run(cmd, env=env).returncode == 0
    assert _records(out2) == records

    # A cached rerun of the first job makes no request at all.
    before = proxy.counts["requests"]
    out3 = tmp_path / "out3.jsonl"
    assert main(_cli_args(items, out3, proxy.url, timeout=timeout)) == 0
    assert proxy.counts["requests"] == before
    assert _records(out3) == records
    assert len(ResponseCache(tmp_path / "cache-a" / "responses.sqlite")) >= n
    print(f"\n{n} rows, proxy counts over all runs: {proxy.counts}")


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{url}/chat/completions", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        return dict(json.load(resp))


def test_proxy_answers_a_repeated_prompt_as_the_first_time(server_url: str) -> None:
    """The fault tests compare runs exactly, so a repeated prompt (a retry, a resumed row)
    must get the answer it got the first time; the proxy sees to that (see ``forward``)."""
    p = FaultProxy(server_url)
    try:
        answers = []
        for text in ["tomato", "lemon", "lemon", "basil leaves", "basil leaves", "lemon"]:
            body = {
                "model": "smollm2", "temperature": 0, "max_tokens": 6, "logprobs": True,
                "top_logprobs": 5, "response_format": {"type": "json_object"},
                "messages": [{"role": "system", "content": "Classify the item as a fruit, "
                              "vegetable, or herb. Answer in JSON."},
                             {"role": "user", "content": text}],
            }
            content = _post(p.url, body)["choices"][0]["logprobs"]["content"]
            answers.append([(t["token"], t["logprob"]) for t in content])
    finally:
        p.close()
    assert answers[1] == answers[2] == answers[5]
    assert answers[3] == answers[4]


def test_faults_resume_and_cache_small(
    tmp_path: Path, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fault_run(tmp_path, proxy, 16, monkeypatch, realtime=False)


@pytest.mark.slow
def test_faults_resume_and_cache_realtime_small(
    tmp_path: Path, realtime_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fault_run(tmp_path, realtime_proxy, 16, monkeypatch, realtime=True)


@pytest.mark.slow
# 600-odd server requests plus faults: 16 min on 2 cores (measured), most of it the ~20
# hangs, each holding the in-order output for the client's TIMEOUT_S.
@pytest.mark.timeout(2400)
def test_faults_resume_and_cache_300_rows(
    tmp_path: Path, realtime_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fault_run(tmp_path, realtime_proxy, 300, monkeypatch, realtime=True)
