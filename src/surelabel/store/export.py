"""What an export holds: every item's record, or one labelled row per settled item.

Shared by ``surelabel export`` and the admin export page; the file format (JSONL, CSV,
Parquet) is :func:`surelabel.io.open_writer`'s business.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

from surelabel.store.items import Item, Items


def _when(t: float | None) -> str | None:
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")


def reviewed_row(item: Item) -> dict[str, Any]:
    """A labelled row: the settled label, with the model's answer kept for comparison
    (what ``surelabel calibrate`` and ``surelabel evaluate`` read)."""
    return {
        "id": item.client_id if item.client_id is not None else item.id,
        "text": item.text,
        "label": item.review_label,
        "model_label": item.predicted,
        "confidence": item.confidence,
        "decision": item.decision,
        "review_action": item.review_action,
        "reviewer": item.reviewer,
        "settled_by": item.settled_by,
        "audit": item.audit,
        "reviewed_at": _when(item.reviewed_at),
        "note": item.review_note,
    }


def export_rows(store: Items, task: str, *, reviewed: bool) -> Iterator[dict[str, Any]]:
    """Every item of ``task`` (its record and review state), or with ``reviewed`` the
    labelled rows of its settled items (clarifications have no label and are left out)."""
    if reviewed:
        return (reviewed_row(i) for i in store.reviewed(task) if i.review_action != "clarify")
    return (i.to_dict() for i in store.all_items(task))
