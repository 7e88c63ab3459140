"""What every part of the store stands on: the engine, the clock and the store's errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

from surelabel.errors import SurelabelError, UserError


class StoreError(SurelabelError):
    """A store operation could not be done."""


class NotFoundError(StoreError, UserError):
    """No such item, user or token."""


class ConflictError(StoreError):
    """The item was already answered, or another reviewer holds its lease."""


class QuotaReachedError(StoreError):
    """A reviewer gave as many answers in a task today as their quota allows."""


class StorePart:
    """A part of :class:`~surelabel.store.Store`: every part shares one engine and one clock.

    The parts (items, queue, statistics, accounts) are mixins of the one ``Store`` class;
    this base only declares what they share. ``Store.__init__`` sets it.
    """

    engine: Engine
    clock: Callable[[], float]


def normalize_url(url: str) -> str:
    """Database URL for SQLAlchemy: ``postgresql://`` means the psycopg 3 driver."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain):]
    return url


def open_engine(url: str) -> Engine:
    """An engine for a SQLite or PostgreSQL URL (already normalised)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        memory = parsed.database in (None, "", ":memory:")
        extra: dict[str, Any] = {"poolclass": StaticPool} if memory else {}
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **extra
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            if not memory:
                # WAL: readers do not block the writer; the review pages stay responsive
                # while the classifier inserts.
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    if parsed.get_backend_name() == "postgresql":
        return create_engine(url, pool_pre_ping=True)
    raise UserError(f"unsupported database {parsed.get_backend_name()!r}: use sqlite or postgresql")
