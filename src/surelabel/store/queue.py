"""The review queue: leases on open items, reviewers' answers, settling, adjudication, undo.

An item needs ``reviews_needed`` answers from different reviewers. When they agree it is
settled (``reviewed``, ``settled_by="agreement"``); when they do not it is ``disputed``
until an adjudicator answers (``settled_by="adjudication"``). Concurrency rules live in
the SQL itself:

- A reviewer claims an item with a conditional ``UPDATE`` that only succeeds when nobody
  else holds an unexpired lease; two reviewers never get the same item at the same time.
- An answer first counts itself with a conditional ``UPDATE ... SET review_count =
  review_count + 1 WHERE status IN (...)`` and only then writes its row, in one
  transaction: the write lock comes first (SQLite never has to upgrade a read snapshot),
  and a second answer to a settled item matches no row and is refused
  (:class:`ConflictError`), never written over the first. A reviewer answers an item once
  (a unique index on ``(item, reviewer)``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, case, delete, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from surelabel.store.base import ConflictError, NotFoundError, QuotaReachedError
from surelabel.store.items import Item, ItemFilter, Items, Order, item_from_row, order_by
from surelabel.store.schema import items, reviews

DAY = 86400.0


@dataclass(frozen=True)
class Review:
    """One answer of one reviewer (``role="review"``) or adjudicator (``"adjudication"``)."""

    id: int
    item_id: int
    task: str
    reviewer: str
    role: str
    action: str
    label: Any
    note: str | None
    started_at: float | None
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in (
            "id", "reviewer", "role", "action", "label", "note", "started_at", "created_at")}


def _review(row: Any) -> Review:
    return Review(row.id, row.item_id, row.task, row.reviewer, row.role, row.action,
                  None if row.label is None else json.loads(row.label), row.note,
                  row.started_at, row.created_at)


def _claimable(user: str, now: float) -> Any:
    """Items ``user`` may take: nobody's, already theirs, or with an expired lease."""
    return or_(
        items.c.claimed_by.is_(None),
        items.c.claimed_by == user,
        items.c.claim_expires <= now,
    )


def _not_answered_by(user: str) -> Any:
    return ~exists().where(reviews.c.item_id == items.c.id, reviews.c.reviewer == user)


def _statuses(adjudicate: bool) -> tuple[str, ...]:
    return ("open", "disputed") if adjudicate else ("open",)


class ReviewQueue(Items):
    """Claiming items for a reviewer, recording answers, settling and undoing them."""

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

    def claim(self, item_id: int, user: str, *, lease: float = 300.0,
              adjudicate: bool = False) -> bool:
        """Take (or renew) the lease on an item ``user`` may answer; False if someone else
        holds it (or it needs no answer from them)."""
        now = self.clock()
        renewing = (items.c.claimed_by == user) & (items.c.claim_expires > now)
        return self._update_if(
            item_id,
            (items.c.status.in_(_statuses(adjudicate)), _claimable(user, now),
             _not_answered_by(user)),
            claimed_by=user,
            claim_expires=now + lease,
            claimed_at=case((renewing, items.c.claimed_at), else_=now),
        )

    def claim_next(
        self,
        task: str,
        user: str,
        *,
        order: Order = "confidence",
        lease: float = 300.0,
        filters: ItemFilter | None = None,
        adjudicate: bool = False,
        quota: int | None = None,
    ) -> Item | None:
        """The next item for ``user``, leased to them; None when none is left.

        An item the user already holds comes first, so reloading the page keeps it; then,
        for an adjudicator, disputed items; then the audit sample (a random share of all
        items, so it never takes over the queue); then ``order``. Items the user answered
        already are never served to them again.
        """
        if quota is not None:
            self.check_quota(task, user, quota)
        where = [items.c.task == task, items.c.status.in_(_statuses(adjudicate)),
                 _not_answered_by(user), *(filters or ItemFilter()).clauses()]
        ranking = (case((items.c.status == "disputed", 0), else_=1),
                   items.c.audit.desc(), *order_by(order))
        for _attempt in range(20):
            now = self.clock()
            with self.engine.connect() as conn:
                held = conn.execute(
                    select(items.c.id)
                    .where(*where, items.c.claimed_by == user, items.c.claim_expires > now)
                    .order_by(*ranking).limit(1)
                ).scalar()
                candidates = [held] if held is not None else list(conn.execute(
                    select(items.c.id).where(*where, _claimable(user, now))
                    .order_by(*ranking).limit(10)
                ).scalars())
            if not candidates:
                return None
            for item_id in candidates:
                if self.claim(item_id, user, lease=lease, adjudicate=adjudicate):
                    return self.get_item(item_id)
            # Every candidate was taken by someone else in the meantime: look again.
        return None

    def release(self, item_id: int, user: str) -> None:
        """Give back a lease (the reviewer skipped the item)."""
        self._update_if(item_id, (items.c.claimed_by == user,),
                        claimed_by=None, claim_expires=None, claimed_at=None)

    # -- answers ------------------------------------------------------------------------

    def answers_since(self, task: str, user: str, since: float) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(
                select(func.count()).select_from(reviews).where(
                    reviews.c.task == task, reviews.c.reviewer == user,
                    reviews.c.created_at > since)
            ).scalar_one())

    def check_quota(self, task: str, user: str, quota: int) -> None:
        """Raise :class:`QuotaReachedError` when ``user`` gave ``quota`` answers in the
        task within the last 24 hours."""
        if self.answers_since(task, user, self.clock() - DAY) >= quota:
            raise QuotaReachedError(
                f"{user} reached the quota of {quota} answers per 24 hours in task {task!r}")

    def answer(
        self,
        item_id: int,
        reviewer: str,
        *,
        label: Any = None,
        clarify: bool = False,
        note: str | None = None,
        adjudicate: bool = False,
        quota: int | None = None,
    ) -> Item:
        """Record one answer: a label, or a request for clarification (with a note).

        ``adjudicate=True`` settles a disputed item with this answer. Raises
        :class:`ConflictError` if the item was already settled, waits for an adjudicator,
        was already answered by ``reviewer``, or another reviewer holds its lease; and
        :class:`QuotaReachedError` past the reviewer's ``quota``.
        """
        if not clarify and label is None:
            raise ValueError("an answer needs a label, or clarify=True")
        current = self.get_item(item_id)
        if quota is not None:
            self.check_quota(current.task, reviewer, quota)
        now = self.clock()
        statuses = ("disputed",) if adjudicate else ("open", "auto")
        given = None if clarify else json.dumps(label)
        try:
            counted = self._count_answer(item_id, reviewer, statuses, now, current,
                                         adjudicate, clarify, label, given, note)
        except IntegrityError:  # the same reviewer, twice at the same moment
            raise ConflictError(f"{reviewer} already answered item {item_id}") from None
        if counted:
            return self.get_item(item_id)
        raise self._refusal(self.get_item(item_id), reviewer, adjudicate)

    def _count_answer(self, item_id: int, reviewer: str, statuses: tuple[str, ...],
                      now: float, current: Item, adjudicate: bool, clarify: bool,
                      label: Any, given: str | None, note: str | None) -> bool:
        with self.engine.begin() as conn:
            counted = conn.execute(
                update(items)
                .where(items.c.id == item_id, items.c.status.in_(statuses),
                       _claimable(reviewer, now), _not_answered_by(reviewer))
                .values(review_count=items.c.review_count + 1)
            )
            if counted.rowcount == 1:
                row = conn.execute(select(items).where(items.c.id == item_id)).one()
                conn.execute(reviews.insert().values(
                    item_id=item_id, task=row.task, reviewer=reviewer,
                    role="adjudication" if adjudicate else "review",
                    action=_action(current, clarify, label), label=given, note=note,
                    started_at=row.claimed_at if row.claimed_by == reviewer else None,
                    created_at=now,
                ))
                self._settle(conn, item_from_row(row), adjudicate, now)
        return bool(counted.rowcount == 1)

    def _settle(self, conn: Connection, item: Item, adjudicate: bool, now: float) -> None:
        """Set the item's status from its answers (in the answer's transaction)."""
        answers = [_review(r) for r in conn.execute(
            select(reviews).where(reviews.c.item_id == item.id).order_by(reviews.c.id))]
        values: dict[str, Any] = {"claimed_by": None, "claim_expires": None,
                                  "claimed_at": None}
        if adjudicate:
            deciding = [answers[-1]]
            settled_by = "adjudication"
        else:
            plain = [a for a in answers if a.role == "review"]
            if len(plain) < item.reviews_needed:
                conn.execute(update(items).where(items.c.id == item.id)
                             .values(status="open", **values))
                return
            if len({json.dumps(a.label) for a in plain}) > 1:  # clarify: null
                conn.execute(update(items).where(items.c.id == item.id)
                             .values(status="disputed", **values))
                return
            deciding, settled_by = plain, "agreement"
        final = deciding[-1]
        notes = [a.note for a in deciding if a.note]
        conn.execute(update(items).where(items.c.id == item.id).values(
            status="reviewed",
            review_action=_action(item, final.action == "clarify", final.label),
            review_label=None if final.label is None else json.dumps(final.label),
            review_note=" | ".join(notes) or None,
            reviewer=", ".join(a.reviewer for a in deciding)[:200],
            reviewed_at=now,
            settled_by=settled_by,
            **values,
        ))

    def _refusal(self, item: Item, reviewer: str, adjudicate: bool) -> ConflictError:
        if item.status == "reviewed":
            return ConflictError(f"item {item.id} was already answered by {item.reviewer}")
        if item.status == "error":
            return ConflictError(f"item {item.id} has no prediction to review")
        if any(r.reviewer == reviewer for r in self.reviews_of(item.id)):
            return ConflictError(f"{reviewer} already answered item {item.id}")
        if item.status == "disputed" and not adjudicate:
            return ConflictError(f"item {item.id} is disputed: it waits for an adjudicator")
        if adjudicate and item.status != "disputed":
            return ConflictError(f"item {item.id} is not disputed; answer it as a reviewer")
        return ConflictError(f"item {item.id} is claimed by {item.claimed_by}")

    def reviews_of(self, item_id: int) -> list[Review]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(reviews).where(reviews.c.item_id == item_id)
                                .order_by(reviews.c.id)).all()
        return [_review(r) for r in rows]

    def last_answer(self, reviewer: str, *, within: float, task: str | None = None
                    ) -> Review | None:
        """``reviewer``'s latest answer of the last ``within`` seconds, if any."""
        q = select(reviews).where(reviews.c.reviewer == reviewer,
                                  reviews.c.created_at > self.clock() - within)
        if task is not None:
            q = q.where(reviews.c.task == task)
        with self.engine.connect() as conn:
            row = conn.execute(q.order_by(reviews.c.id.desc()).limit(1)).first()
        return None if row is None else _review(row)

    def undo_last(self, reviewer: str, *, within: float, task: str | None = None,
                  lease: float = 300.0) -> Item:
        """Take back ``reviewer``'s latest answer of the last ``within`` seconds.

        Only while nobody answered the item after them. The item goes back to where it
        was before the answer, leased to the reviewer so they can answer it again.
        """
        last = self.last_answer(reviewer, within=within, task=task)
        if last is None:
            raise NotFoundError(f"nothing to undo: {reviewer} gave no answer in the last "
                                f"{within:.0f} seconds")
        later = reviews.alias("later")
        now = self.clock()
        with self.engine.begin() as conn:
            gone = conn.execute(delete(reviews).where(
                reviews.c.id == last.id,
                ~exists().where(later.c.item_id == last.item_id, later.c.id > last.id),
            ))
            if gone.rowcount == 1:
                row = conn.execute(select(items).where(items.c.id == last.item_id)).one()
                if last.role == "adjudication":
                    status = "disputed"
                elif row.review_count <= 1 and row.decision == "accept" and not row.audit:
                    status = "auto"
                else:
                    status = "open"
                conn.execute(update(items).where(items.c.id == last.item_id).values(
                    review_count=items.c.review_count - 1, status=status,
                    review_action=None, review_label=None, review_note=None, reviewer=None,
                    reviewed_at=None, settled_by=None,
                    claimed_by=None if status == "auto" else reviewer,
                    claim_expires=None if status == "auto" else now + lease,
                    claimed_at=None if status == "auto" else now,
                ))
        if gone.rowcount != 1:
            raise ConflictError(f"item {last.item_id} was answered by someone else after "
                                "you; your answer can no longer be undone")
        return self.get_item(last.item_id)


def _action(item: Item, clarify: bool, label: Any) -> str:
    if clarify:
        return "clarify"
    return "accept" if label == item.predicted else "correct"
