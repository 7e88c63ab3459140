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


@migration
def m002_teams(conn: Connection) -> None:
    """Several reviewers per item, task roles, lockouts, task-scoped tokens, the audit
    sample, raw log-probabilities, content hashes and calibration versions."""
    for ddl in (
        "ALTER TABLE items ADD COLUMN content_hash VARCHAR(64)",
        "ALTER TABLE items ADD COLUMN audit INTEGER DEFAULT 0 NOT NULL",
        "ALTER TABLE items ADD COLUMN reviews_needed INTEGER DEFAULT 1 NOT NULL",
        "ALTER TABLE items ADD COLUMN review_count INTEGER DEFAULT 0 NOT NULL",
        "ALTER TABLE items ADD COLUMN settled_by VARCHAR(16)",
        "ALTER TABLE items ADD COLUMN logprobs TEXT",
        "ALTER TABLE items ADD COLUMN claimed_at FLOAT",
        "CREATE UNIQUE INDEX uq_items_task_content_hash ON items (task, content_hash)",
        "CREATE INDEX ix_items_reviewed ON items (task, status, reviewed_at)",
        "ALTER TABLE users ADD COLUMN must_change_password INTEGER DEFAULT 0 NOT NULL",
        "ALTER TABLE users ADD COLUMN disabled_at FLOAT",
        "ALTER TABLE users ADD COLUMN failed_logins INTEGER DEFAULT 0 NOT NULL",
        "ALTER TABLE users ADD COLUMN locked_until FLOAT",
        "ALTER TABLE tokens ADD COLUMN task VARCHAR(200)",
    ):
        conn.execute(text(ddl))
    md = MetaData()
    Table(
        "reviews",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("item_id", Integer, nullable=False),
        Column("task", String(200), nullable=False),
        Column("reviewer", String(200), nullable=False),
        Column("role", String(16), nullable=False),
        Column("action", String(16), nullable=False),
        Column("label", Text),
        Column("note", Text),
        Column("started_at", Float),
        Column("created_at", Float, nullable=False),
        Index("uq_reviews_item_reviewer", "item_id", "reviewer", unique=True),
        Index("ix_reviews_task_reviewer", "task", "reviewer", "created_at"),
        Index("ix_reviews_task_created", "task", "created_at"),
    )
    Table(
        "task_roles",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("user_name", String(200), nullable=False),
        Column("task", String(200), nullable=False),
        Column("role", String(20), nullable=False),
        Column("quota", Integer),
        Column("created_at", Float, nullable=False),
        Index("uq_task_roles_user_task", "user_name", "task", unique=True),
    )
    Table(
        "login_failures",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("user_name", String(200), nullable=False),
        Column("address", String(100), nullable=False),
        Column("at", Float, nullable=False),
        Index("ix_login_failures_user", "user_name", "at"),
        Index("ix_login_failures_address", "address", "at"),
    )
    Table(
        "calibrations",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("task", String(200), nullable=False),
        Column("created_at", Float, nullable=False),
        Column("source", String(20), nullable=False),
        Column("digest", String(64), nullable=False),
        Column("data", Text, nullable=False),
        Column("method", String(40), nullable=False),
        Column("n_fitted", Integer, nullable=False),
        Column("fit_on", String(40)),
        Column("heldout_ece", Float),
        Column("raw_ece", Float),
        Column("accept_threshold", Float),
        Column("target_error", Float),
        Column("error_bound", Float),
        Column("reviews_seen", Integer),
        Column("note", Text),
        Index("uq_calibrations_task_digest", "task", "digest", unique=True),
    )
    Table(
        "calibration_events",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("task", String(200), nullable=False),
        Column("version", Integer),
        Column("action", String(20), nullable=False),
        Column("actor", String(200), nullable=False),
        Column("at", Float, nullable=False),
        Index("ix_calibration_events_task", "task", "id"),
    )
    md.create_all(conn)
    # What the one-answer service stored becomes the first (settling) answer of each item,
    # and every existing non-admin account keeps working on every task.
    conn.execute(text(
        "INSERT INTO reviews (item_id, task, reviewer, role, action, label, note, created_at) "
        "SELECT id, task, COALESCE(reviewer, '?'), 'review', review_action, review_label, "
        "review_note, COALESCE(reviewed_at, created_at) FROM items WHERE status = 'reviewed'"
    ))
    conn.execute(text(
        "UPDATE items SET review_count = 1, settled_by = 'agreement' WHERE status = 'reviewed'"
    ))
    conn.execute(text(
        "INSERT INTO task_roles (user_name, task, role, created_at) "
        "SELECT name, '*', 'reviewer', created_at FROM users WHERE role <> 'admin'"
    ))
