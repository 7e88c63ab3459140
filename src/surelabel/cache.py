"""A persistent cache of API responses, so rerunning a job makes no requests.

The key is a SHA-256 of the endpoint, the model and the exact request body (canonical JSON:
sorted keys, no spaces), so any change to the prompt, the schema, the sampling settings or the
seed is a different entry. Only successful responses are stored. SQLite in WAL mode allows
several processes to share one file; one connection per thread keeps it thread-safe.

A cache is known by its file: it opens the file on first use, and pickles as its path, so a
backend holding one can be rebuilt in a worker process.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    endpoint TEXT NOT NULL,
    model TEXT NOT NULL,
    response TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def default_cache_path() -> Path:
    """``$SURELABEL_CACHE_DIR/responses.sqlite``, else under ``$XDG_CACHE_HOME`` or ``~/.cache``."""
    root = os.environ.get("SURELABEL_CACHE_DIR")
    if root:
        return Path(root) / "responses.sqlite"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "surelabel" / "responses.sqlite"


def request_key(endpoint: str, model: str, body: dict[str, Any]) -> str:
    """The cache key of one request: endpoint + model + canonical request body."""
    canonical = json.dumps(
        {"endpoint": endpoint.rstrip("/"), "model": model, "body": body},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ResponseCache:
    """SQLite-backed map from a request key to the response JSON.

    Parameters
    ----------
    path:
        The database file (default: :func:`default_cache_path`); created with its folder
        on first use.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r})"

    def __reduce__(self) -> tuple[type[ResponseCache], tuple[str]]:
        # Connections belong to the threads that opened them; the other side opens its own.
        return (ResponseCache, (str(self.path),))

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
            self._local.conn = conn
        return conn

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._connect().execute(
            "SELECT response FROM responses WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        value: dict[str, Any] = json.loads(row[0])
        return value

    def put(self, key: str, endpoint: str, model: str, response: dict[str, Any]) -> None:
        self._connect().execute(
            "INSERT OR REPLACE INTO responses (key, endpoint, model, response, created) "
            "VALUES (?, ?, ?, ?, ?)",
            (key, endpoint, model, json.dumps(response, ensure_ascii=False), time.time()),
        )

    def __len__(self) -> int:
        row = self._connect().execute("SELECT COUNT(*) FROM responses").fetchone()
        return int(row[0])


def open_cache(
    option: ResponseCache | str | os.PathLike[str] | bool | None,
) -> ResponseCache | None:
    """The cache a backend option names: ``None``/``False`` none, ``True`` the default file,
    a path that file, or a ready :class:`ResponseCache`."""
    if option is None or option is False:
        return None
    if option is True:
        return ResponseCache()
    if isinstance(option, ResponseCache):
        return option
    if isinstance(option, (str, os.PathLike)):
        return ResponseCache(option)
    raise TypeError(f"cache: expected a path, True/False or a ResponseCache, got {option!r}")
