"""The HTTP API under ``/v1``: classify, search and read items, claim and answer them,
adjudicate, undo, statistics and calibration versions."""

# No ``from __future__ import annotations``: FastAPI reads the annotations at runtime.

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query

from surelabel.errors import CalibrationError
from surelabel.server.answers import check_answer, classifier_for, parse_confidence_band
from surelabel.server.auth import (
    CanAdjudicate,
    CanAdmin,
    CanClassify,
    CanRead,
    CanReview,
    allow_task,
    reviewer_of,
)
from surelabel.server.context import Service, ServiceDep
from surelabel.server.ingest import classify_and_store
from surelabel.server.schemas import BatchIn, ClaimIn, ItemIn, ReviewIn
from surelabel.server.worker import QueueFullError
from surelabel.store import Item, ItemFilter, Token
from surelabel.store.items import MAX_ID

router = APIRouter(prefix="/v1", tags=["api"])

ItemId = Annotated[int, Path(ge=1, le=MAX_ID, description="the item's number")]


def task_summary(service: Service, name: str) -> dict[str, Any]:
    c = service.classifiers[name]
    review = service.review[name]
    return {
        "name": c.task.name,
        "kind": c.task.kind,
        "labels": list(c.task.label_names),
        "thresholds": {"accept": c.thresholds.accept, "clarify": c.thresholds.clarify},
        "method": c.method,
        "model": service.backend.model_name,
        "counts": service.store.count_items(c.task.name),
        "review": {k: getattr(review, k) for k in review.__dataclass_fields__},
        "calibration_version": service.store.active_calibration_id(name),
    }


@router.get("/tasks")
def list_tasks(token: CanRead, service: ServiceDep) -> dict[str, Any]:
    """The tasks this service classifies (those the token may see), with item counts."""
    return {"tasks": [task_summary(service, name) for name in service.classifiers
                      if token.allows(name)]}


@router.post("/tasks/{task}/classify")
async def classify(
    task: str,
    body: ItemIn | BatchIn,
    _: CanClassify,
    service: ServiceDep,
) -> Any:
    """Classify one item (``{"text", "id"}``) or a batch (``{"items": [...]}``).

    Every item is stored with its prediction. An item whose ``id`` is already stored for
    the task is not classified again: the stored record is returned (and, when the task
    sets ``review.dedupe``, so is an item without an id whose exact text is stored).
    """
    classifier_for(service.classifiers, task)
    settings = service.settings
    batch = body.items if isinstance(body, BatchIn) else [body]
    if len(batch) > settings.batch_limit:
        raise HTTPException(
            422, f"a batch holds at most {settings.batch_limit} items, got {len(batch)}"
        )
    entries = [(entry.id, entry.text) for entry in batch]
    try:
        future = service.pool.submit(
            lambda: classify_and_store(service, task, entries), weight=len(batch)
        )
    except QueueFullError as exc:
        raise HTTPException(
            503,
            f"classification queue is full ({exc}); retry later",
            headers={"Retry-After": str(settings.retry_after_seconds)},
        ) from None
    stored = await asyncio.wrap_future(future)
    records = [item.to_dict() for item, _created in stored]
    return {"items": records} if isinstance(body, BatchIn) else records[0]


def item_filter(
    q: Annotated[str | None, Query(max_length=500, description="id, client id or text")] = None,
    label: Annotated[str | None, Query(max_length=300)] = None,
    decision: Literal["accept", "review", "clarify"] | None = None,
    status: Literal["auto", "open", "disputed", "reviewed", "error"] | None = None,
    reviewed: bool | None = None,
    audit: bool | None = None,
    confidence: Annotated[str | None, Query(max_length=20,
                                            description="a band LOW-HIGH, e.g. 0.5-0.6")] = None,
) -> ItemFilter:
    lo, hi = parse_confidence_band(confidence)
    return ItemFilter(q=q, label=label, decision=decision, status=status, reviewed=reviewed,
                      audit=audit, min_confidence=lo, max_confidence=hi)


FilterDep = Annotated[ItemFilter, Depends(item_filter)]


@router.get("/tasks/{task}/items")
def list_items(
    task: str,
    _: CanRead,
    service: ServiceDep,
    f: FilterDep,
    order: Literal["confidence", "oldest"] = "confidence",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> dict[str, Any]:
    """Stored items of a task, searched (``q``: number, client id or a piece of the text)
    and filtered; ``order=confidence`` lists the least confident first."""
    classifier_for(service.classifiers, task)
    found = service.store.list_items(task, filters=f, order=order, limit=limit, offset=offset)
    return {"items": [i.to_dict() for i in found],
            "total": service.store.count_matching(task, f)}


@router.get("/tasks/{task}/stats")
def task_stats(task: str, _: CanRead, service: ServiceDep) -> dict[str, Any]:
    """Items per band, throughput, model-reviewer agreement per confidence band,
    agreement between annotators (overall, per label, per reviewer), the audit sample's
    accuracy per band with 95 % intervals, drift per day, and the calibration versions."""
    classifier = classifier_for(service.classifiers, task)
    return {**service.store.stats(task, labels=classifier.task.label_names),
            "calibration": service.store.calibration_summary(task)}


def _item_for(service: Service, token: Token, item_id: int) -> Item:
    item = service.store.get_item(item_id)
    allow_task(token, item.task)
    return item


@router.get("/items/{item_id}")
def get_item(item_id: ItemId, token: CanRead, service: ServiceDep) -> dict[str, Any]:
    """One item with its settled review and every single answer."""
    item = _item_for(service, token, item_id)
    return {**item.to_dict(),
            "answers": [r.to_dict() for r in service.store.reviews_of(item_id)]}


@router.post("/tasks/{task}/claim")
def claim_next(task: str, body: ClaimIn, token: CanReview, service: ServiceDep
               ) -> dict[str, Any]:
    """Lease the next item to answer to this token (least confident first, the audit
    sample before the rest; ``adjudicate`` with the adjudicate scope: disputed items
    first). ``{"item": null}`` when none is left."""
    classifier_for(service.classifiers, task)
    if body.adjudicate and "adjudicate" not in token.scopes:
        raise HTTPException(403, "this token lacks the 'adjudicate' scope")
    item = service.store.claim_next(
        task, reviewer_of(token), order="oldest" if body.order == "oldest" else "confidence",
        lease=service.settings.lease_seconds, adjudicate=body.adjudicate,
        quota=service.review[task].quota)
    return {"item": None if item is None else item.to_dict()}


def _answer(service: Service, token: Token, item_id: int, body: ReviewIn,
            adjudicate: bool) -> dict[str, Any]:
    item = _item_for(service, token, item_id)
    label = check_answer(service.classifiers, item, body.label, body.clarify)
    done = service.store.answer(
        item_id, reviewer_of(token), label=label, clarify=body.clarify, note=body.note,
        adjudicate=adjudicate, quota=service.review[item.task].quota if item.task in
        service.review else None)
    service.metrics.answers.labels(item.task, "adjudication" if adjudicate else "review").inc()
    if done.status == "reviewed":
        service.calibrations.note_settled(item.task)
    return done.to_dict()


@router.post("/items/{item_id}/review")
def review_item(
    item_id: ItemId, body: ReviewIn, token: CanReview, service: ServiceDep
) -> dict[str, Any]:
    """Answer an item: a final ``label``, or ``clarify: true`` with a ``note``.

    The item is settled when ``reviews_per_item`` reviewers agree (``disputed`` when they
    do not). 409 if the item was already settled (answers are never overwritten), this
    token answered it already, or another reviewer holds it; 429 past the task's quota.
    """
    return _answer(service, token, item_id, body, adjudicate=False)


@router.post("/items/{item_id}/adjudicate")
def adjudicate_item(
    item_id: ItemId, body: ReviewIn, token: CanAdjudicate, service: ServiceDep
) -> dict[str, Any]:
    """Settle a disputed item (its reviewers disagree) with this answer."""
    return _answer(service, token, item_id, body, adjudicate=True)


@router.post("/reviews/undo")
def undo(token: CanReview, service: ServiceDep, task: str | None = None) -> dict[str, Any]:
    """Take back this token's last answer (within the undo window, while nobody answered
    the item after it); the item is leased back to the token."""
    if task is not None:
        allow_task(token, task)
    elif token.task is not None:
        task = token.task
    item = service.store.undo_last(reviewer_of(token), within=service.settings.undo_seconds,
                                   task=task, lease=service.settings.lease_seconds)
    return item.to_dict()


# -- calibration versions ---------------------------------------------------------------


@router.get("/tasks/{task}/calibrations")
def calibrations(task: str, _: CanRead, service: ServiceDep) -> dict[str, Any]:
    """Every calibration version of the task (newest first), the active one, the switches."""
    classifier_for(service.classifiers, task)
    return service.store.calibration_summary(task)


@router.get("/tasks/{task}/calibrations/{version}")
def calibration_file(task: str, version: Annotated[int, Path(ge=1, le=MAX_ID)],
                     _: CanRead, service: ServiceDep) -> dict[str, Any]:
    """One version as a calibration file (``surelabel classify --calibration`` reads it)."""
    classifier_for(service.classifiers, task)
    data = service.store.get_calibration(task, version).data
    assert data is not None
    return data


@router.post("/tasks/{task}/calibrations/refit")
def refit(task: str, token: CanAdmin, service: ServiceDep) -> dict[str, Any]:
    """Fit a new version from the reviewed audit sample now and activate it."""
    classifier_for(service.classifiers, task)
    try:
        result = service.calibrations.refit(task, actor=reviewer_of(token))
    except CalibrationError as exc:
        raise HTTPException(409, f"no refit: {exc}") from None
    return {"version": result.version, "message": result.message,
            **service.store.calibration_summary(task)}


@router.post("/tasks/{task}/calibrations/rollback")
def rollback(task: str, token: CanAdmin, service: ServiceDep) -> dict[str, Any]:
    """Activate the version made before the active one (none before the first)."""
    classifier_for(service.classifiers, task)
    version = service.store.rollback_calibration(task, actor=reviewer_of(token))
    return {"active": version, **service.store.calibration_summary(task)}


@router.post("/tasks/{task}/calibrations/{version}/activate")
def activate(task: str, version: Annotated[int, Path(ge=1, le=MAX_ID)], token: CanAdmin,
             service: ServiceDep) -> dict[str, Any]:
    """Make one version the active one."""
    classifier_for(service.classifiers, task)
    service.store.activate_calibration(task, version, actor=reviewer_of(token))
    return {"active": version, **service.store.calibration_summary(task)}


@router.post("/tasks/{task}/calibrations/none")
def deactivate(task: str, token: CanAdmin, service: ServiceDep) -> dict[str, Any]:
    """Apply no calibration to new items of the task."""
    classifier_for(service.classifiers, task)
    service.store.activate_calibration(task, None, actor=reviewer_of(token),
                                       action="deactivate")
    return {"active": None, **service.store.calibration_summary(task)}
