"""Append-only schema migrations (the approach of simonw/llm's ``migrations.py``).

Each migration is a function registered in order with :func:`migration`; its name is
recorded in ``_surelabel_migrations`` once applied. Never edit or reorder a migration that
has shipped: add a new one. Migrations declare their own tables rather than importing
:mod:`surelabel.store.schema`, so that later changes to the schema cannot alter what an old
migration did.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    select,
    text,
)

Migration = Callable[[Connection], None]
MIGRATIONS: list[tuple[str, Migration]] = []
_LOCK_KEY = 0x5E1AB  # PostgreSQL advisory lock: one migrating process at a time

_applied = Table(
    "_surelabel_migrations",
    MetaData(),
    Column("name", String(200), primary_key=True),
    Column("applied_at", Float, nullable=False),
)


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append((fn.__name__, fn))
    return fn


def migrate(engine: Engine) -> list[str]:
    """Apply the migrations not yet applied, in one transaction; return their names."""
    done: list[str] = []
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
        _applied.create(conn, checkfirst=True)
        applied = set(conn.execute(select(_applied.c.name)).scalars())
        for name, fn in MIGRATIONS:
            if name in applied:
                continue
            fn(conn)
            conn.execute(_applied.insert().values(name=name, applied_at=time.time()))
            done.append(name)
    return done


@migration
def m001_initial(conn: Connection) -> None:
    md = MetaData()
    Table(
        "items",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("task", String(200), nullable=False),
        Column("client_id", String(200)),
        Column("text", Text, nullable=False),
        Column("label", Text),
        Column("confidence", Float),
        Column("decision", String(16)),
        Column("record", Text, nullable=False),
        Column("model", String(400)),
        Column("method", String(40)),
        Column("calibration", String(200)),
        Column("error", Text),
        Column("status", String(16), nullable=False),
        Column("created_at", Float, nullable=False),
        Column("claimed_by", String(200)),
        Column("claim_expires", Float),
        Column("review_action", String(16)),
        Column("review_label", Text),
        Column("review_note", Text),
        Column("reviewer", String(200)),
        Column("reviewed_at", Float),
        # NULL client ids never collide (on SQLite and PostgreSQL alike).
        Index("uq_items_task_client_id", "task", "client_id", unique=True),
        Index("ix_items_queue", "task", "status", "confidence"),
    )
    Table(
        "users",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("name", String(200), nullable=False, unique=True),
        Column("role", String(20), nullable=False),
        Column("password_hash", String(400), nullable=False),
        Column("created_at", Float, nullable=False),
    )
    Table(
        "tokens",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("name", String(200), nullable=False),
        Column("token_hash", String(64), nullable=False, unique=True),
        Column("scopes", String(200), nullable=False),
        Column("created_at", Float, nullable=False),
        Column("revoked_at", Float),
    )
    Table(
        "sessions",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("token_hash", String(64), nullable=False, unique=True),
        Column("user_name", String(200), nullable=False),
        Column("csrf", String(64), nullable=False),
        Column("created_at", Float, nullable=False),
        Column("expires_at", Float, nullable=False),
    )
    md.create_all(conn)
