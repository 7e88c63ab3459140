"""Calibration versions of a task: fitted from reviews or imported from a file, kept for
good, one of them active (or none); rollback activates the one before.

Which version is active is the latest ``calibration_events`` row of the task, so a switch
is one ``INSERT``, every switch is remembered, and another process (``surelabel
calibrations rollback``) changes what a running server applies.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from surelabel.store.base import ConflictError, NotFoundError, StorePart
from surelabel.store.schema import calibration_events, calibrations, items


@dataclass(frozen=True)
class CalibrationVersion:
    """One stored calibration (``data`` is ``Calibration.to_dict()``)."""

    id: int
    task: str
    created_at: float
    source: str
    method: str
    n_fitted: int
    fit_on: str | None
    heldout_ece: float | None
    raw_ece: float | None
    accept_threshold: float | None
    target_error: float | None
    error_bound: float | None
    reviews_seen: int | None
    note: str | None
    data: dict[str, Any] | None = None

    def to_dict(self, *, with_data: bool = False) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "data"}
        if with_data:
            out["data"] = self.data
        return out


@dataclass(frozen=True)
class AuditRow:
    """A settled audit-sample item with the raw label log-probabilities it was scored with."""

    item_id: int
    logprobs: list[Any]
    label: Any


def _version(row: Any, with_data: bool = False) -> CalibrationVersion:
    m = row._mapping
    return CalibrationVersion(
        id=m["id"], task=m["task"], created_at=m["created_at"], source=m["source"],
        method=m["method"], n_fitted=m["n_fitted"], fit_on=m["fit_on"],
        heldout_ece=m["heldout_ece"], raw_ece=m["raw_ece"],
        accept_threshold=m["accept_threshold"], target_error=m["target_error"],
        error_bound=m["error_bound"], reviews_seen=m["reviews_seen"], note=m["note"],
        data=json.loads(m["data"]) if with_data else None,
    )


class Calibrations(StorePart):
    """Storing, listing, activating and rolling back calibration versions."""

    def add_calibration(
        self,
        task: str,
        data: Mapping[str, Any],
        *,
        source: str,
        actor: str,
        activate: bool = True,
        **summary: Any,
    ) -> tuple[int, bool]:
        """Store a version (once per content: the same data again returns its id);
        returns ``(id, created)``. ``summary``: the ``CalibrationVersion`` columns
        (``method``, ``n_fitted``, ``heldout_ece``, ...)."""
        text = json.dumps(data, sort_keys=True, allow_nan=True)
        digest = hashlib.sha256(text.encode()).hexdigest()
        now = self.clock()
        try:
            with self.engine.begin() as conn:
                new = conn.execute(calibrations.insert().values(
                    task=task, created_at=now, source=source, digest=digest, data=text,
                    method=str(summary.pop("method", "?")),
                    n_fitted=int(summary.pop("n_fitted", data.get("n_fitted", 0))),
                    **summary,
                )).inserted_primary_key
                assert new is not None
                version = int(new[0])
                if activate:
                    conn.execute(calibration_events.insert().values(
                        task=task, version=version, action=source, actor=actor, at=now))
        except IntegrityError:
            with self.engine.connect() as conn:
                version = int(conn.execute(select(calibrations.c.id).where(
                    calibrations.c.task == task, calibrations.c.digest == digest)).scalar_one())
            return version, False
        return version, True

    def active_calibration_id(self, task: str) -> int | None:
        """The active version of ``task`` (None: no calibration)."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(calibration_events.c.version)
                .where(calibration_events.c.task == task)
                .order_by(calibration_events.c.id.desc()).limit(1)
            ).scalar()

    def get_calibration(self, task: str, version: int) -> CalibrationVersion:
        with self.engine.connect() as conn:
            row = conn.execute(select(calibrations).where(
                calibrations.c.task == task, calibrations.c.id == version)).first()
        if row is None:
            raise NotFoundError(f"task {task!r} has no calibration version {version}")
        return _version(row, with_data=True)

    def list_calibrations(self, task: str) -> list[CalibrationVersion]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(calibrations).where(calibrations.c.task == task)
                                .order_by(calibrations.c.id)).all()
        return [_version(r) for r in rows]

    def calibration_events(self, task: str, limit: int = 50) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(calibration_events).where(calibration_events.c.task == task)
                .order_by(calibration_events.c.id.desc()).limit(limit)).all()
        return [{"version": r.version, "action": r.action, "actor": r.actor, "at": r.at}
                for r in rows]

    def activate_calibration(self, task: str, version: int | None, *, actor: str,
                             action: str = "activate") -> None:
        """Make ``version`` the active one (None: apply no calibration)."""
        if version is not None:
            self.get_calibration(task, version)
        with self.engine.begin() as conn:
            conn.execute(calibration_events.insert().values(
                task=task, version=version, action=action, actor=actor, at=self.clock()))

    def rollback_calibration(self, task: str, *, actor: str) -> int | None:
        """Activate the version made before the active one (or none, before the first);
        returns what is active now."""
        current = self.active_calibration_id(task)
        if current is None:
            raise ConflictError(f"task {task!r} has no active calibration to roll back")
        with self.engine.connect() as conn:
            previous = conn.execute(
                select(func.max(calibrations.c.id))
                .where(calibrations.c.task == task, calibrations.c.id < current)
            ).scalar()
        self.activate_calibration(task, previous, actor=actor, action="rollback")
        return previous

    def audit_rows(self, task: str, *, model: str | None, method: str | None) -> list[AuditRow]:
        """Settled, labelled audit-sample items scored by ``model`` with ``method`` (the
        rows a refit learns from), oldest first."""
        q = select(items.c.id, items.c.logprobs, items.c.review_label).where(
            items.c.task == task, items.c.status == "reviewed", items.c.audit == 1,
            items.c.review_action != "clarify", items.c.logprobs.is_not(None))
        if model is not None:
            q = q.where(items.c.model == model)
        if method is not None:
            q = q.where(items.c.method == method)
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(items.c.id)).all()
        return [AuditRow(r.id, json.loads(r.logprobs), json.loads(r.review_label))
                for r in rows]

    def settled_since(self, task: str, since: float) -> int:
        """Items of ``task`` settled after ``since`` (what triggers a refit)."""
        with self.engine.connect() as conn:
            return int(conn.execute(
                select(func.count()).select_from(items).where(
                    items.c.task == task, items.c.status == "reviewed",
                    items.c.reviewed_at > since)
            ).scalar_one())

    def calibration_summary(self, task: str) -> dict[str, Any]:
        """The active version (with its figures) and every version, for the stats page."""
        active = self.active_calibration_id(task)
        versions = self.list_calibrations(task)
        current = next((v for v in versions if v.id == active), None)
        return {
            "active": None if current is None else current.to_dict(),
            "versions": [v.to_dict() for v in reversed(versions)],
            "events": self.calibration_events(task, limit=20),
        }
