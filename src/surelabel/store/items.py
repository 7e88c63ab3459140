"""Classified items: storing a classifier's record once, finding, searching and counting.

An item is inserted at most once per ``(task, client id)``, and, when the task asks for
it, at most once per ``(task, content hash)`` for items without an id: ``INSERT ... ON
CONFLICT DO NOTHING`` and then a read, so a retried request returns the stored item.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from sqlalchemy import Connection, func, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from surelabel.errors import UserError
from surelabel.store.base import NotFoundError, StorePart
from surelabel.store.schema import items

Order = Literal["confidence", "oldest"]
ORDERS: tuple[str, ...] = ("confidence", "oldest")
BANDS: tuple[str, ...] = ("accept", "review", "clarify")
STATUSES: tuple[str, ...] = ("auto", "open", "disputed", "reviewed", "error")
#: Largest item id (SQLite and PostgreSQL integers are 64-bit): larger ids name no item.
MAX_ID = 2**63 - 1


def predicted_label(record: Mapping[str, Any]) -> Any:
    """A record's answer: its label, or the list of labels of a multilabel task."""
    return record["labels"] if "labels" in record else record.get("label")


def content_hash(text: str) -> str:
    """The de-duplication key of an item without an id: SHA-256 of its exact text."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _version(value: str | None) -> int | str | None:
    """A stored calibration version: the id of a version in the database, or (databases
    from before versions) the name of a calibration file."""
    return int(value) if value is not None and value.isdigit() else value


@dataclass(frozen=True)
class Item:
    """One stored item: the classifier's record plus queue and review state.

    The ``review_*`` fields and ``reviewer`` hold the *settled* answer (the agreed label,
    or the adjudicator's); every single answer is a :class:`~surelabel.store.queue.Review`.
    """

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
    audit: bool = False
    reviews_needed: int = 1
    review_count: int = 0
    settled_by: str | None = None
    logprobs: list[Any] | None = None
    claimed_at: float | None = None

    @property
    def predicted(self) -> Any:
        """The model's answer: a label, or the list of labels of a multilabel task."""
        return predicted_label(self.record)

    @property
    def calibration_version(self) -> int | str | None:
        return _version(self.calibration)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.record)
        version = self.calibration_version
        out.update(
            item_id=self.id,
            task=self.task,
            status=self.status,
            calibration_version=version,
            created_at=self.created_at,
            audit=self.audit,
            reviews={"needed": self.reviews_needed, "count": self.review_count},
            review=None
            if self.status != "reviewed"
            else {
                "action": self.review_action,
                "label": self.review_label,
                "note": self.review_note,
                "reviewer": self.reviewer,
                "reviewed_at": self.reviewed_at,
                "settled_by": self.settled_by,
            },
        )
        # Records say which calibration made their confidence; older records did not.
        out.setdefault("calibration", "task" if version is not None else "none")
        return out


@dataclass(frozen=True)
class ItemFilter:
    """Which items to list or serve: every field left ``None`` matches everything.

    ``q`` finds an item by its number or client id, or by a piece of its text (any case);
    ``label`` is the model's label (one of a multilabel item's labels); ``reviewed``
    separates settled items from the others; confidence bounds are inclusive-exclusive.
    """

    q: str | None = None
    label: str | None = None
    decision: str | None = None
    status: str | None = None
    reviewed: bool | None = None
    audit: bool | None = None
    min_confidence: float | None = None
    max_confidence: float | None = None

    def clauses(self) -> list[Any]:
        out: list[Any] = []
        if self.q is not None and self.q.strip():
            q = self.q.strip()
            found = [items.c.client_id == q,
                     items.c.text.ilike(f"%{_like(q)}%", escape="\\")]
            number = q.removeprefix("#")
            if number.isdigit() and int(number) <= MAX_ID:
                found.append(items.c.id == int(number))
            out.append(or_(*found))
        if self.label is not None:
            out.append(items.c.label.like(f"%{_like(json.dumps(self.label))}%", escape="\\"))
        if self.decision is not None:
            out.append(items.c.decision == self.decision)
        if self.status is not None:  # one status, or several separated by commas
            out.append(items.c.status.in_(self.status.split(",")))
        if self.reviewed is not None:
            out.append(items.c.status == "reviewed" if self.reviewed
                       else items.c.status != "reviewed")
        if self.audit is not None:
            out.append(items.c.audit == int(self.audit))
        if self.min_confidence is not None:
            out.append(items.c.confidence >= self.min_confidence)
        if self.max_confidence is not None:
            out.append(items.c.confidence < self.max_confidence)
        return out

    def active(self) -> dict[str, Any]:
        """The fields that are set (for links that keep the filter)."""
        return {k: v for k, v in self.__dict__.items() if v is not None and v != ""}


def _like(text: str) -> str:
    """``text`` matched literally inside a LIKE pattern."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def order_by(order: str) -> tuple[Any, ...]:
    """The ``ORDER BY`` of a queue order: least confident first, or oldest first."""
    if order == "confidence":
        return (items.c.confidence.asc(), items.c.id.asc())
    if order == "oldest":
        return (items.c.created_at.asc(), items.c.id.asc())
    raise UserError(f"unknown order {order!r}; expected one of {', '.join(ORDERS)}")


def item_from_row(row: Any) -> Item:
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
        audit=bool(m["audit"]),
        reviews_needed=m["reviews_needed"],
        review_count=m["review_count"],
        settled_by=m["settled_by"],
        logprobs=None if m["logprobs"] is None else json.loads(m["logprobs"]),
        claimed_at=m["claimed_at"],
    )


class Items(StorePart):
    """Adding, finding, listing and counting a task's items."""

    def find_item(self, task: str, client_id: str) -> Item | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(items).where(items.c.task == task, items.c.client_id == client_id)
            ).first()
        return None if row is None else item_from_row(row)

    def find_by_hash(self, task: str, digest: str) -> Item | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(items).where(items.c.task == task, items.c.content_hash == digest)
            ).first()
        return None if row is None else item_from_row(row)

    def add_item(
        self,
        task: str,
        record: dict[str, Any],
        *,
        calibration: str | int | None = None,
        reviews_needed: int = 1,
        audit: bool = False,
        content_hash: str | None = None,
        logprobs: Any = None,
    ) -> tuple[Item, bool]:
        """Store a classifier record; return the stored item and whether it is new.

        A record whose ``id`` (the client's id) is already stored for the task is not
        stored again: the first item is returned with ``False``. So is a record without an
        id whose ``content_hash`` is stored (pass one only when the task de-duplicates).
        An ``audit`` item (the random audit sample) waits for reviewers whatever its
        decision; ``logprobs`` are the raw label log-probabilities, kept for refits.
        """
        client_id = None if record.get("id") is None else str(record["id"])
        error = bool(record.get("error"))
        if error:
            status = "error"
        elif audit or record.get("decision") != "accept":
            status = "open"
        else:
            status = "auto"
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
            "calibration": None if calibration is None else str(calibration),
            "error": record.get("error"),
            "status": status,
            "created_at": self.clock(),
            "content_hash": content_hash if client_id is None else None,
            "audit": int(audit and not error),
            "reviews_needed": max(1, reviews_needed),
            "logprobs": None if logprobs is None else json.dumps(logprobs),
        }
        with self.engine.begin() as conn:
            key: tuple[str, str] | None = None
            if client_id is not None:
                key = ("client_id", client_id)
            elif content_hash is not None:
                key = ("content_hash", content_hash)
            if key is None:
                new_id = conn.execute(items.insert().values(**values)).inserted_primary_key
                assert new_id is not None
                row = conn.execute(select(items).where(items.c.id == new_id[0])).one()
                return item_from_row(row), True
            created = _insert_once(conn, values, key[0])
            row = conn.execute(
                select(items).where(items.c.task == task, items.c[key[0]] == key[1])
            ).one()
        return item_from_row(row), created

    def get_item(self, item_id: int) -> Item:
        if not 0 < item_id <= MAX_ID:
            raise NotFoundError(f"no item {item_id}")
        with self.engine.connect() as conn:
            row = conn.execute(select(items).where(items.c.id == item_id)).first()
        if row is None:
            raise NotFoundError(f"no item {item_id}")
        return item_from_row(row)

    def list_items(
        self,
        task: str,
        *,
        decision: str | None = None,
        status: str | None = None,
        filters: ItemFilter | None = None,
        order: Order = "confidence",
        limit: int = 100,
        offset: int = 0,
    ) -> list[Item]:
        f = _merge(filters, decision, status)
        q = (select(items).where(items.c.task == task, *f.clauses())
             .order_by(*order_by(order)).limit(limit).offset(offset))
        with self.engine.connect() as conn:
            return [item_from_row(r) for r in conn.execute(q)]

    def count_matching(self, task: str, filters: ItemFilter | None = None) -> int:
        f = filters or ItemFilter()
        with self.engine.connect() as conn:
            return int(conn.execute(
                select(func.count()).select_from(items)
                .where(items.c.task == task, *f.clauses())
            ).scalar_one())

    def count_items(self, task: str) -> dict[str, int]:
        """Items per decision band and per status (``{"accept": n, ..., "open": n, ...}``),
        and ``audit``, the items in the audit sample."""
        out = {k: 0 for k in (*BANDS, *STATUSES, "audit")}
        with self.engine.connect() as conn:
            for column in (items.c.decision, items.c.status):
                rows = conn.execute(
                    select(column, func.count())
                    .where(items.c.task == task, column.is_not(None))
                    .group_by(column)
                )
                for key, n in rows:
                    out[key] = out.get(key, 0) + n
            out["audit"] = int(conn.execute(
                select(func.count()).select_from(items)
                .where(items.c.task == task, items.c.audit == 1)
            ).scalar_one())
        return out

    def reviewed(self, task: str) -> Iterator[Item]:
        """Settled items of a task, in the order they were settled."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(items)
                .where(items.c.task == task, items.c.status == "reviewed")
                .order_by(items.c.reviewed_at, items.c.id)
            ).all()
        for row in rows:
            yield item_from_row(row)

    def all_items(self, task: str) -> Iterator[Item]:
        """Every item of a task, oldest first (read in pages, so memory stays flat)."""
        last = 0
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(items).where(items.c.task == task, items.c.id > last)
                    .order_by(items.c.id).limit(1000)
                ).all()
            if not rows:
                return
            for row in rows:
                yield item_from_row(row)
            last = rows[-1].id


def _merge(filters: ItemFilter | None, decision: str | None, status: str | None) -> ItemFilter:
    f = filters or ItemFilter()
    if decision is not None:
        f = replace(f, decision=decision)
    if status is not None:
        f = replace(f, status=status)
    return f


def _insert_once(conn: Connection, values: dict[str, Any], column: str) -> bool:
    """``INSERT ... ON CONFLICT (task, column) DO NOTHING``; True when it inserted."""
    stmt: Any
    if conn.dialect.name == "postgresql":
        stmt = pg_insert(items).values(**values).on_conflict_do_nothing(
            index_elements=["task", column])
    else:
        stmt = sqlite_insert(items).values(**values).on_conflict_do_nothing(
            index_elements=["task", column])
    # RETURNING gives a row only when the insert happened (rowcount is not reliable for
    # ON CONFLICT across drivers).
    return conn.execute(stmt.returning(items.c.id)).first() is not None

