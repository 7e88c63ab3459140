"""The review queue: leases on open items, and reviewers' answers.

Concurrency rules live in the SQL itself:

- A reviewer claims an item with a conditional ``UPDATE`` that only succeeds when nobody
  else holds an unexpired lease; two reviewers never get the same item at the same time.
- An answer is a conditional ``UPDATE ... WHERE status IN ('open', 'auto')``: the second
  answer to an item matches no row and is refused (:class:`ConflictError`), never written
  over the first.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import or_, select, update

from surelabel.store.base import ConflictError
from surelabel.store.items import Item, Items, Order, order_by
from surelabel.store.schema import items


def _claimable(user: str, now: float) -> Any:
    """Items ``user`` may take: nobody's, already theirs, or with an expired lease."""
    return or_(
        items.c.claimed_by.is_(None),
        items.c.claimed_by == user,
        items.c.claim_expires <= now,
    )


class ReviewQueue(Items):
    """Claiming open items for a reviewer and recording answers."""

    def _update_if(self, item_id: int, conditions: Sequence[Any], **values: Any) -> bool:
        """``UPDATE`` the item only where ``conditions`` hold; True when it was updated.

        The check and the write are one statement, so two reviewers racing for the same
        item cannot both pass the check.
        """
        with self.engine.begin() as conn:
            result = conn.execute(
                update(items).where(items.c.id == item_id, *conditions).values(**values)
            )
        return result.rowcount == 1

    def claim(self, item_id: int, user: str, *, lease: float = 300.0) -> bool:
        """Take (or renew) the lease on an open item; False if someone else holds it."""
        now = self.clock()
        return self._update_if(
            item_id,
            (items.c.status == "open", _claimable(user, now)),
            claimed_by=user,
            claim_expires=now + lease,
        )

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
                    .order_by(*order_by(order))
                    .limit(1)
                ).scalar()
                candidates = [held] if held is not None else list(
                    conn.execute(
                        select(items.c.id)
                        .where(
                            items.c.task == task,
                            items.c.status == "open",
                            _claimable(user, now),
                        )
                        .order_by(*order_by(order))
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
        answered = self._update_if(
            item_id,
            (items.c.status.in_(("open", "auto")), _claimable(reviewer, now)),
            status="reviewed",
            review_action=action,
            review_label=None if final is None else json.dumps(final),
            review_note=note,
            reviewer=reviewer,
            reviewed_at=now,
            claimed_by=None,
            claim_expires=None,
        )
        if answered:
            return self.get_item(item_id)
        item = self.get_item(item_id)
        if item.status == "reviewed":
            raise ConflictError(f"item {item_id} was already answered by {item.reviewer}")
        if item.status == "error":
            raise ConflictError(f"item {item_id} has no prediction to review")
        raise ConflictError(f"item {item_id} is claimed by {item.claimed_by}")
