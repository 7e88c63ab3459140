"""The store: classified items, the review queue, reviewers, API tokens and web sessions.

Every query is built with SQLAlchemy Core (parameterized); the same code runs on SQLite
(the default, in WAL mode) and PostgreSQL. Concurrency rules live in the SQL itself:

- An item is inserted at most once per ``(task, client id)``: ``INSERT ... ON CONFLICT DO
  NOTHING`` and then a read, so a retried request returns the stored item.
- A reviewer claims an item with a conditional ``UPDATE`` that only succeeds when nobody
  else holds an unexpired lease; two reviewers never get the same item at the same time.
- An answer is a conditional ``UPDATE ... WHERE status IN ('open', 'auto')``: the second
  answer to an item matches no row and is refused (:class:`ConflictError`), never written
  over the first.
"""

from __future__ import annotations

import functools
import itertools
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import (
    Engine,
    create_engine,
    event,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import StaticPool

from surelabel.errors import SurelabelError, UserError
from surelabel.store import security
from surelabel.store.migrations import migrate
from surelabel.store.schema import items, sessions, tokens, users

Order = Literal["confidence", "oldest"]
ORDERS: tuple[str, ...] = ("confidence", "oldest")
ROLES: tuple[str, ...] = ("reviewer", "admin")
SCOPES: tuple[str, ...] = ("classify", "read", "review")
BANDS: tuple[str, ...] = ("accept", "review", "clarify")
# Confidence bins for the agreement table: [0, 0.5), [0.5, 0.6), ..., [0.9, 1.0].
AGREEMENT_EDGES: tuple[float, ...] = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class StoreError(SurelabelError):
    """A store operation could not be done."""


class NotFoundError(StoreError, UserError):
    """No such item, user or token."""


class ConflictError(StoreError):
    """The item was already answered, or another reviewer holds its lease."""


def normalize_url(url: str) -> str:
    """Database URL for SQLAlchemy: ``postgresql://`` means the psycopg 3 driver."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain):]
    return url


def predicted_label(record: Mapping[str, Any]) -> Any:
    """A record's answer: its label, or the list of labels of a multilabel task."""
    return record["labels"] if "labels" in record else record.get("label")


@dataclass(frozen=True)
class Item:
    """One stored item: the classifier's record plus queue and review state."""

    id: int
    task: str
    client_id: str | None
    text: str
    record: dict[str, Any]
    status: str
    decision: str | None
    confidence: float | None
    calibration: str | None
    created_at: float
    claimed_by: str | None
    claim_expires: float | None
    review_action: str | None
    review_label: Any
    review_note: str | None
    reviewer: str | None
    reviewed_at: float | None

    @property
    def predicted(self) -> Any:
        """The model's answer: a label, or the list of labels of a multilabel task."""
        return predicted_label(self.record)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.record)
        out.update(
            item_id=self.id,
            task=self.task,
            status=self.status,
            calibration=self.calibration,
            created_at=self.created_at,
            review=None
            if self.review_action is None
            else {
                "action": self.review_action,
                "label": self.review_label,
                "note": self.review_note,
                "reviewer": self.reviewer,
                "reviewed_at": self.reviewed_at,
            },
        )
        return out


@dataclass(frozen=True)
class User:
    name: str
    role: str
    created_at: float


@dataclass(frozen=True)
class Token:
    name: str
    scopes: tuple[str, ...]
    created_at: float
    revoked_at: float | None = None


@dataclass(frozen=True)
class Session:
    user: User
    csrf: str
    expires_at: float


def _item(row: Any) -> Item:
    m = row._mapping
    return Item(
        id=m["id"],
        task=m["task"],
        client_id=m["client_id"],
        text=m["text"],
        record=json.loads(m["record"]),
        status=m["status"],
        decision=m["decision"],
        confidence=m["confidence"],
        calibration=m["calibration"],
        created_at=m["created_at"],
        claimed_by=m["claimed_by"],
        claim_expires=m["claim_expires"],
        review_action=m["review_action"],
        review_label=None if m["review_label"] is None else json.loads(m["review_label"]),
        review_note=m["review_note"],
        reviewer=m["reviewer"],
        reviewed_at=m["reviewed_at"],
    )


class Store:
    """Database access for the review service.

    Parameters
    ----------
    url:
        SQLAlchemy URL, e.g. ``sqlite:///surelabel.db`` or
        ``postgresql://user:pw@127.0.0.1/surelabel``.
    clock:
        Returns the current time in seconds (injected so tests can expire leases).
    migrate:
        Apply pending migrations on open (default).
    """

    def __init__(
        self,
        url: str = "sqlite:///surelabel.db",
        *,
        clock: Callable[[], float] = time.time,
        migrate: bool = True,
    ) -> None:
        self.url = normalize_url(url)
        self.clock = clock
        self.engine = _engine(self.url)
        if migrate:
            self.migrate()

    def migrate(self) -> list[str]:
        return migrate(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- items ------------------------------------------------------------------------

    def find_item(self, task: str, client_id: str) -> Item | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(items).where(items.c.task == task, items.c.client_id == client_id)
            ).first()
        return None if row is None else _item(row)

    def add_item(
        self, task: str, record: dict[str, Any], *, calibration: str | None = None
    ) -> tuple[Item, bool]:
        """Store a classifier record; return the stored item and whether it is new.

        A record whose ``id`` (the client's id) is already stored for the task is not
        stored again: the first item is returned with ``False``.
        """
        client_id = None if record.get("id") is None else str(record["id"])
        if record.get("error"):
            status = "error"
        elif record.get("decision") == "accept":
            status = "auto"
        else:
            status = "open"
        predicted = predicted_label(record)
        values = {
            "task": task,
            "client_id": client_id,
            "text": str(record.get("text", "")),
            "label": None if predicted is None else json.dumps(predicted),
            "confidence": record.get("confidence"),
            "decision": record.get("decision"),
            "record": json.dumps(record),
            "model": record.get("model"),
            "method": record.get("method"),
            "calibration": calibration,
            "error": record.get("error"),
            "status": status,
            "created_at": self.clock(),
        }
        with self.engine.begin() as conn:
            if client_id is None:
                new_id = conn.execute(items.insert().values(**values)).inserted_primary_key
                assert new_id is not None
                row = conn.execute(select(items).where(items.c.id == new_id[0])).one()
                return _item(row), True
            stmt: Any
            if conn.dialect.name == "postgresql":
                stmt = pg_insert(items).values(**values).on_conflict_do_nothing(
                    index_elements=["task", "client_id"]
                )
            else:
                stmt = sqlite_insert(items).values(**values).on_conflict_do_nothing(
                    index_elements=["task", "client_id"]
                )
            # RETURNING gives a row only when the insert happened (rowcount is not
            # reliable for ON CONFLICT across drivers).
            created = conn.execute(stmt.returning(items.c.id)).first() is not None
            row = conn.execute(
                select(items).where(items.c.task == task, items.c.client_id == client_id)
            ).one()
        return _item(row), created

    def get_item(self, item_id: int) -> Item:
        with self.engine.connect() as conn:
            row = conn.execute(select(items).where(items.c.id == item_id)).first()
        if row is None:
            raise NotFoundError(f"no item {item_id}")
        return _item(row)

    def list_items(
        self,
        task: str,
        *,
        decision: str | None = None,
        status: str | None = None,
        order: Order = "confidence",
        limit: int = 100,
        offset: int = 0,
    ) -> list[Item]:
        q = select(items).where(items.c.task == task)
        if decision is not None:
            q = q.where(items.c.decision == decision)
        if status is not None:
            q = q.where(items.c.status == status)
        q = q.order_by(*_order_by(order)).limit(limit).offset(offset)
        with self.engine.connect() as conn:
            return [_item(r) for r in conn.execute(q)]

    def count_items(self, task: str) -> dict[str, int]:
        """Items per decision band and per status: ``{"accept": n, ..., "open": n, ...}``."""
        out = {k: 0 for k in (*BANDS, "error", "auto", "open", "reviewed")}
        with self.engine.connect() as conn:
            for column in (items.c.decision, items.c.status):
                rows = conn.execute(
                    select(column, func.count())
                    .where(items.c.task == task, column.is_not(None))
                    .group_by(column)
                )
                for key, n in rows:
                    out[key] = out.get(key, 0) + n
        return out

    # -- the review queue -------------------------------------------------------------

    def _claimable(self, user: str, now: float) -> Any:
        return or_(
            items.c.claimed_by.is_(None),
            items.c.claimed_by == user,
            items.c.claim_expires <= now,
        )

    def claim(self, item_id: int, user: str, *, lease: float = 300.0) -> bool:
        """Take (or renew) the lease on an open item; False if someone else holds it."""
        now = self.clock()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(items)
                .where(
                    items.c.id == item_id,
                    items.c.status == "open",
                    self._claimable(user, now),
                )
                .values(claimed_by=user, claim_expires=now + lease)
            )
        return result.rowcount == 1

    def claim_next(
        self, task: str, user: str, *, order: Order = "confidence", lease: float = 300.0
    ) -> Item | None:
        """The next open item for ``user``, leased to them; None when the queue is empty.

        An item the user already holds comes first, so reloading the page keeps it.
        """
        for _attempt in range(20):
            now = self.clock()
            with self.engine.connect() as conn:
                held = conn.execute(
                    select(items.c.id)
                    .where(
                        items.c.task == task,
                        items.c.status == "open",
                        items.c.claimed_by == user,
                        items.c.claim_expires > now,
                    )
                    .order_by(*_order_by(order))
                    .limit(1)
                ).scalar()
                candidates = [held] if held is not None else list(
                    conn.execute(
                        select(items.c.id)
                        .where(
                            items.c.task == task,
                            items.c.status == "open",
                            self._claimable(user, now),
                        )
                        .order_by(*_order_by(order))
                        .limit(10)
                    ).scalars()
                )
            if not candidates:
                return None
            for item_id in candidates:
                if self.claim(item_id, user, lease=lease):
                    return self.get_item(item_id)
            # Every candidate was taken by someone else in the meantime: look again.
        return None

    def answer(
        self,
        item_id: int,
        reviewer: str,
        *,
        label: Any = None,
        clarify: bool = False,
        note: str | None = None,
    ) -> Item:
        """Record a reviewer's answer: a final label, or a request for clarification.

        The action is ``accept`` when the label is the model's, ``correct`` when it is
        another, ``clarify`` when the reviewer needs clarification (with a note). Raises
        :class:`ConflictError` if the item was already answered or another reviewer holds
        its lease.
        """
        if not clarify and label is None:
            raise ValueError("an answer needs a label, or clarify=True")
        current = self.get_item(item_id)
        if clarify:
            action, final = "clarify", None
        else:
            action = "accept" if label == current.predicted else "correct"
            final = label
        now = self.clock()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(items)
                .where(
                    items.c.id == item_id,
                    items.c.status.in_(("open", "auto")),
                    self._claimable(reviewer, now),
                )
                .values(
                    status="reviewed",
                    review_action=action,
                    review_label=None if final is None else json.dumps(final),
                    review_note=note,
                    reviewer=reviewer,
                    reviewed_at=now,
                    claimed_by=None,
                    claim_expires=None,
                )
            )
        if result.rowcount == 1:
            return self.get_item(item_id)
        item = self.get_item(item_id)
        if item.status == "reviewed":
            raise ConflictError(f"item {item_id} was already answered by {item.reviewer}")
        if item.status == "error":
            raise ConflictError(f"item {item_id} has no prediction to review")
        raise ConflictError(f"item {item_id} is claimed by {item.claimed_by}")

    # -- reporting --------------------------------------------------------------------

    def reviewed(self, task: str) -> Iterator[Item]:
        """Reviewed items of a task, in the order they were answered."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(items)
                .where(items.c.task == task, items.c.status == "reviewed")
                .order_by(items.c.reviewed_at, items.c.id)
            ).all()
        for row in rows:
            yield _item(row)

    def all_items(self, task: str) -> Iterator[Item]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(items).where(items.c.task == task).order_by(items.c.id)
            ).all()
        for row in rows:
            yield _item(row)

    def stats(self, task: str, *, edges: Sequence[float] = AGREEMENT_EDGES) -> dict[str, Any]:
        """Items per band, review throughput, and model-reviewer agreement.

        Agreement is the share of answered items (accept or correct; clarifications have no
        label) where the reviewer's label equals the model's, per confidence bin and per
        decision band: it tells whether the thresholds sit where they should.
        """
        now = self.clock()
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    items.c.confidence,
                    items.c.decision,
                    items.c.review_action,
                    items.c.reviewed_at,
                ).where(items.c.task == task, items.c.status == "reviewed")
            ).all()
        bins: list[dict[str, Any]] = [
            {"low": lo, "high": hi, "n": 0, "agree": 0}
            for lo, hi in itertools.pairwise(edges)
        ]
        bands = {b: {"n": 0, "agree": 0} for b in BANDS}
        actions = {"accept": 0, "correct": 0, "clarify": 0}
        times: list[float] = []
        for confidence, decision, action, reviewed_at in rows:
            actions[action] = actions.get(action, 0) + 1
            times.append(reviewed_at)
            if action == "clarify" or confidence is None:
                continue
            agree = int(action == "accept")
            for b in bins:
                last = b is bins[-1]
                if b["low"] <= confidence < b["high"] or (last and confidence >= b["high"]):
                    b["n"] += 1
                    b["agree"] += agree
                    break
            if decision in bands:
                bands[decision]["n"] += 1
                bands[decision]["agree"] += agree
        for entry in (*bins, *bands.values()):
            entry["rate"] = entry["agree"] / entry["n"] if entry["n"] else None
        day = 86400.0
        return {
            "task": task,
            "counts": self.count_items(task),
            "reviews": {
                "total": len(rows),
                "actions": actions,
                "last_hour": sum(t > now - 3600 for t in times),
                "last_day": sum(t > now - day for t in times),
                "per_day": [
                    sum(now - (d + 1) * day < t <= now - d * day for t in times)
                    for d in range(7)
                ],
            },
            "agreement_by_confidence": bins,
            "agreement_by_band": bands,
        }

    # -- users and sessions -----------------------------------------------------------

    def add_user(self, name: str, role: str = "reviewer", password: str | None = None) -> str:
        """Create a user; returns the password (a new random one unless given)."""
        if role not in ROLES:
            raise UserError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        if not name.strip():
            raise UserError("user name must not be empty")
        password = password or security.new_password()
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    users.insert().values(
                        name=name,
                        role=role,
                        password_hash=security.hash_password(password),
                        created_at=self.clock(),
                    )
                )
        except IntegrityError as exc:
            raise UserError(f"user {name!r} already exists") from exc
        return password

    def set_password(self, name: str, password: str | None = None) -> str:
        password = password or security.new_password()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(users)
                .where(users.c.name == name)
                .values(password_hash=security.hash_password(password))
            )
        if result.rowcount != 1:
            raise NotFoundError(f"no user {name!r}")
        return password

    def list_users(self) -> list[User]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(users).order_by(users.c.name)).all()
        return [User(r.name, r.role, r.created_at) for r in rows]

    def authenticate(self, name: str, password: str) -> User | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(users).where(users.c.name == name)).first()
        if row is None:
            # Spend the same time as a real check, so timing does not reveal user names.
            security.verify_password(password, _dummy_hash())
            return None
        if not security.verify_password(password, row.password_hash):
            return None
        return User(row.name, row.role, row.created_at)

    def create_session(self, user: User, *, ttl: float = 12 * 3600) -> tuple[str, Session]:
        """A new web session; returns the cookie value (shown once) and the session."""
        cookie = security.new_token("")
        csrf = security.new_token("")
        now = self.clock()
        with self.engine.begin() as conn:
            conn.execute(sessions.delete().where(sessions.c.expires_at <= now))
            conn.execute(
                sessions.insert().values(
                    token_hash=security.token_hash(cookie),
                    user_name=user.name,
                    csrf=csrf,
                    created_at=now,
                    expires_at=now + ttl,
                )
            )
        return cookie, Session(user, csrf, now + ttl)

    def get_session(self, cookie: str) -> Session | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(sessions, users.c.role, users.c.created_at.label("user_created"))
                .join(users, users.c.name == sessions.c.user_name)
                .where(
                    sessions.c.token_hash == security.token_hash(cookie),
                    sessions.c.expires_at > self.clock(),
                )
            ).first()
        if row is None:
            return None
        return Session(User(row.user_name, row.role, row.user_created), row.csrf, row.expires_at)

    def delete_session(self, cookie: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sessions.delete().where(sessions.c.token_hash == security.token_hash(cookie))
            )

    # -- API tokens -------------------------------------------------------------------

    def create_token(self, name: str, scopes: Sequence[str] = ("classify", "read")) -> str:
        """A new API token (returned once; only its hash is stored)."""
        bad = [s for s in scopes if s not in SCOPES]
        if bad or not scopes:
            raise UserError(
                f"unknown scope {', '.join(bad) or '(none)'}; expected some of {', '.join(SCOPES)}"
            )
        token = security.new_token()
        with self.engine.begin() as conn:
            conn.execute(
                tokens.insert().values(
                    name=name,
                    token_hash=security.token_hash(token),
                    scopes=" ".join(dict.fromkeys(scopes)),
                    created_at=self.clock(),
                )
            )
        return token

    def check_token(self, token: str) -> Token | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(tokens).where(
                    tokens.c.token_hash == security.token_hash(token),
                    tokens.c.revoked_at.is_(None),
                )
            ).first()
        return None if row is None else Token(row.name, tuple(row.scopes.split()), row.created_at)

    def revoke_tokens(self, name: str) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(
                update(tokens)
                .where(tokens.c.name == name, tokens.c.revoked_at.is_(None))
                .values(revoked_at=self.clock())
            )
        return int(result.rowcount)

    def list_tokens(self) -> list[Token]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(tokens).order_by(tokens.c.id)).all()
        return [
            Token(r.name, tuple(r.scopes.split()), r.created_at, r.revoked_at) for r in rows
        ]


@functools.cache
def _dummy_hash() -> str:
    """A real hash to check unknown user names against (made on first use: scrypt is slow)."""
    return security.hash_password("not a password")


def _order_by(order: str) -> tuple[Any, ...]:
    if order == "confidence":
        return (items.c.confidence.asc(), items.c.id.asc())
    if order == "oldest":
        return (items.c.created_at.asc(), items.c.id.asc())
    raise UserError(f"unknown order {order!r}; expected one of {', '.join(ORDERS)}")


def _engine(url: str) -> Engine:
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
