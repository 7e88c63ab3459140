"""Helpers of the review-service tests (not a test module itself)."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi.testclient import TestClient

from surelabel.backends.base import Backend
from surelabel.server import Settings, create_app
from surelabel.server.review_settings import ReviewSettings
from surelabel.store import Store
from surelabel.task import Task

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
PASSWORD = "correct horse battery"
#: Keywords of a fake sentiment model for sst2 rows: confident, and often wrong.
POSITIVE = ["good", "great", "best", "fun", "love", "beautiful", "charming", "funny",
            "enjoy", "wonderful", "touching", "delight"]
NEGATIVE = ["bad", "worst", "dull", "boring", "mess", "fails", "slow", "stupid", "tedious",
            "lack", "flat", "nothing"]


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def service_settings(tasks: Task | Sequence[Task], *, audit: float = 0.0,
                     review: dict[str, Any] | None = None, **settings: Any) -> Settings:
    """Settings for tests: no audit sample unless asked (the draw is random), and the
    given review settings for every task."""
    task_list = [tasks] if isinstance(tasks, Task) else list(tasks)
    per_task = {t.name: ReviewSettings(**{"audit": audit, **(review or {})})
                for t in task_list}
    return Settings(review=per_task, **settings)


def make_client(tasks: Task | Sequence[Task], backend: Backend, store: Store, *,
                audit: float = 0.0, review: dict[str, Any] | None = None,
                **settings: Any) -> TestClient:
    app = create_app(tasks, backend, store,
                     settings=service_settings(tasks, audit=audit, review=review, **settings))
    return TestClient(app)


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m is not None, "no CSRF field on the page"
    return m.group(1)


def login(client: TestClient, store: Store, name: str = "alice", role: str = "reviewer", *,
          tasks: Sequence[str] | None = None, create: bool = True) -> str:
    """Log ``name`` in (creating the account with a chosen password); returns the CSRF
    token of the session."""
    if create:
        store.add_user(name, role, PASSWORD, tasks=tasks)
    csrf = csrf_of(client.get("/login").text)
    r = client.post("/login", data={"username": name, "password": PASSWORD, "csrf": csrf,
                                    "next": "/review"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie
    return csrf_of(client.get("/review").text)


def item_id(response: Any) -> int:
    """The item number of an item page a request ended on."""
    m = re.search(r"/review/items/(\d+)", str(response.url))
    assert m is not None, f"not an item page: {response.url}"
    return int(m.group(1))


def bearer(store: Store, scopes: Sequence[str], name: str = "t", task: str | None = None
           ) -> dict[str, str]:
    return {"Authorization": f"Bearer {store.create_token(name, scopes, task=task)}"}


class LiveServer:
    """uvicorn serving an app on a free loopback port, in a thread."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def cli(*argv: str) -> int:
    """Run a ``surelabel`` sub-command of the review service (users, tokens, export,
    calibrations) as the command line does: a parser holding only those commands, so
    these tests do not depend on the other commands' options."""
    import argparse
    import importlib

    from surelabel.cli import _Parser
    from surelabel.errors import SurelabelError

    parser = _Parser(prog="surelabel")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in ("users", "tokens", "export", "calibrations"):
        importlib.import_module(f"surelabel.cli.{name}").register(sub)
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        code: int = args.func(args)
    except SurelabelError as exc:
        import sys

        print(f"surelabel: error: {exc}", file=sys.stderr)
        return exc.exit_code
    assert isinstance(args, argparse.Namespace)
    return code


@contextmanager
def database(kind: str, tmp_path: Path, prefix: str = "srv") -> Iterator[str]:
    """A fresh database URL: a SQLite file, or a throw-away PostgreSQL schema."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / f'{prefix}.db'}"
        return
    from support import pg_schema_url

    with pg_schema_url(prefix) as url:
        yield url
