"""Classified items: storing a classifier's record once, finding, listing and counting.

An item is inserted at most once per ``(task, client id)``: ``INSERT ... ON CONFLICT DO
NOTHING`` and then a read, so a retried request returns the stored item.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from surelabel.errors import UserError
from surelabel.store.base import NotFoundError, StorePart
from surelabel.store.schema import items

Order = Literal["confidence", "oldest"]
ORDERS: tuple[str, ...] = ("confidence", "oldest")
BANDS: tuple[str, ...] = ("accept", "review", "clarify")


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


def order_by(order: str) -> tuple[Any, ...]:
    """The ``ORDER BY`` of a queue order: least confident first, or oldest first."""
    if order == "confidence":
        return (items.c.confidence.asc(), items.c.id.asc())
    if order == "oldest":
        return (items.c.created_at.asc(), items.c.id.asc())
    raise UserError(f"unknown order {order!r}; expected one of {', '.join(ORDERS)}")


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


class Items(StorePart):
    """Adding, finding, listing and counting a task's items."""

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
        q = q.order_by(*order_by(order)).limit(limit).offset(offset)
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
