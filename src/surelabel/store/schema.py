"""The current shape of the store's tables, for queries.

The tables are created and changed only by :mod:`surelabel.store.migrations`; this module
describes what the migrations produce (a test checks that the two agree). Times are UTC
seconds since the epoch (floats), the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

# Item status: "auto" (accepted by the model), "open" (waiting for a reviewer),
# "reviewed" (a person answered), "error" (the item could not be classified).
items = Table(
    "items",
    metadata,
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
    Index("uq_items_task_client_id", "task", "client_id", unique=True),
    Index("ix_items_queue", "task", "status", "confidence"),
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("role", String(20), nullable=False),
    Column("password_hash", String(400), nullable=False),
    Column("created_at", Float, nullable=False),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("scopes", String(200), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("user_name", String(200), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)
