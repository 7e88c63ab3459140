"""The current shape of the store's tables, for queries.

The tables are created and changed only by :mod:`surelabel.store.migrations`; this module
describes what the migrations produce (a test checks that the two agree). Times are UTC
seconds since the epoch (floats), the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

# Item status: "auto" (accepted by the model), "open" (waiting for a reviewer, or for more
# reviewers), "disputed" (its reviewers disagree: waiting for an adjudicator), "reviewed"
# (settled: the reviewers agreed, or an adjudicator decided), "error" (not classified).
# The review_* columns hold the settled answer; every single answer is a row of `reviews`.
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
    # m002: several reviewers, the audit sample, raw log-probabilities, de-duplication.
    Column("content_hash", String(64)),
    Column("audit", Integer, nullable=False, server_default="0"),
    Column("reviews_needed", Integer, nullable=False, server_default="1"),
    Column("review_count", Integer, nullable=False, server_default="0"),
    Column("settled_by", String(16)),
    Column("logprobs", Text),
    Column("claimed_at", Float),
    Index("uq_items_task_client_id", "task", "client_id", unique=True),
    Index("ix_items_queue", "task", "status", "confidence"),
    Index("uq_items_task_content_hash", "task", "content_hash", unique=True),
    Index("ix_items_reviewed", "task", "status", "reviewed_at"),
)

# One row per answer of one reviewer (role "review") or adjudicator ("adjudication").
reviews = Table(
    "reviews",
    metadata,
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

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("role", String(20), nullable=False),
    Column("password_hash", String(400), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("must_change_password", Integer, nullable=False, server_default="0"),
    Column("disabled_at", Float),
    Column("failed_logins", Integer, nullable=False, server_default="0"),
    Column("locked_until", Float),
)

# Per-task roles of non-admin accounts (task "*": every task), with an optional daily quota.
task_roles = Table(
    "task_roles",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_name", String(200), nullable=False),
    Column("task", String(200), nullable=False),
    Column("role", String(20), nullable=False),
    Column("quota", Integer),
    Column("created_at", Float, nullable=False),
    Index("uq_task_roles_user_task", "user_name", "task", unique=True),
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
    Column("task", String(200)),
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

# Failed logins, per account name and client address, for throttling.
login_failures = Table(
    "login_failures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_name", String(200), nullable=False),
    Column("address", String(100), nullable=False),
    Column("at", Float, nullable=False),
    Index("ix_login_failures_user", "user_name", "at"),
    Index("ix_login_failures_address", "address", "at"),
)

# Calibration versions of a task (fitted from reviews, or imported from a file) ...
calibrations = Table(
    "calibrations",
    metadata,
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

# ... and which one is active: the latest event of a task names it (NULL: none).
calibration_events = Table(
    "calibration_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task", String(200), nullable=False),
    Column("version", Integer),
    Column("action", String(20), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("at", Float, nullable=False),
    Index("ix_calibration_events_task", "task", "id"),
)
