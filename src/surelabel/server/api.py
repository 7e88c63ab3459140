"""The HTTP API under ``/v1``: classify, list and read items, answer them, statistics."""

# No ``from __future__ import annotations``: FastAPI reads the annotations at runtime.

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query

from surelabel.server.answers import check_answer, classifier_for
from surelabel.server.auth import CanClassify, CanRead, CanReview
from surelabel.server.context import Service, ServiceDep
from surelabel.server.schemas import BatchIn, ItemIn, ReviewIn
from surelabel.server.worker import QueueFullError

router = APIRouter(prefix="/v1", tags=["api"])


def classify_and_store(service: Service, task: str, batch: list[ItemIn]) -> list[dict[str, Any]]:
    """Classify and store ``batch`` (on a worker thread); items already stored are reused."""
    classifier = service.classifiers[task]
    _, version = service.settings.calibrations.get(task, (None, None))
    out: list[dict[str, Any]] = []
    for entry in batch:
        if entry.id is not None:
            known = service.store.find_item(task, str(entry.id))
            if known is not None:
                out.append(known.to_dict())
                continue
        record = classifier.classify_one(entry.text, entry.id).to_dict()
        item, _created = service.store.add_item(task, record, calibration=version)
        out.append(item.to_dict())
    return out


@router.get("/tasks")
def list_tasks(_: CanRead, service: ServiceDep) -> dict[str, Any]:
    """The tasks this service classifies, with item counts per band."""
    return {
        "tasks": [
            {
                "name": c.task.name,
                "kind": c.task.kind,
                "labels": list(c.task.label_names),
                "thresholds": {"accept": c.thresholds.accept, "clarify": c.thresholds.clarify},
                "method": c.method,
                "model": service.backend.model_name,
                "counts": service.store.count_items(c.task.name),
            }
            for c in service.classifiers.values()
        ]
    }


@router.post("/tasks/{task}/classify")
async def classify(
    task: str,
    body: ItemIn | BatchIn,
    _: CanClassify,
    service: ServiceDep,
) -> Any:
    """Classify one item (``{"text", "id"}``) or a batch (``{"items": [...]}``).

    Every item is stored with its prediction. An item whose ``id`` is already stored for
    the task is not classified again: the stored record is returned.
    """
    classifier_for(service.classifiers, task)
    settings = service.settings
    batch = body.items if isinstance(body, BatchIn) else [body]
    if len(batch) > settings.batch_limit:
        raise HTTPException(
            422, f"a batch holds at most {settings.batch_limit} items, got {len(batch)}"
        )
    try:
        future = service.pool.submit(
            lambda: classify_and_store(service, task, batch), weight=len(batch)
        )
    except QueueFullError as exc:
        raise HTTPException(
            503,
            f"classification queue is full ({exc}); retry later",
            headers={"Retry-After": str(settings.retry_after_seconds)},
        ) from None
    records = await asyncio.wrap_future(future)
    return {"items": records} if isinstance(body, BatchIn) else records[0]


@router.get("/tasks/{task}/items")
def list_items(
    task: str,
    _: CanRead,
    service: ServiceDep,
    decision: Literal["accept", "review", "clarify"] | None = None,
    status: Literal["auto", "open", "reviewed", "error"] | None = None,
    order: Literal["confidence", "oldest"] = "confidence",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """Stored items of a task; ``order=confidence`` lists the least confident first."""
    classifier_for(service.classifiers, task)
    found = service.store.list_items(
        task, decision=decision, status=status, order=order, limit=limit, offset=offset
    )
    return {"items": [i.to_dict() for i in found]}


@router.get("/tasks/{task}/stats")
def task_stats(task: str, _: CanRead, service: ServiceDep) -> dict[str, Any]:
    """Items per band, review throughput, model-reviewer agreement per confidence band."""
    classifier_for(service.classifiers, task)
    return service.store.stats(task)


@router.get("/items/{item_id}")
def get_item(item_id: int, _: CanRead, service: ServiceDep) -> dict[str, Any]:
    return service.store.get_item(item_id).to_dict()


@router.post("/items/{item_id}/review")
def review_item(
    item_id: int, body: ReviewIn, token: CanReview, service: ServiceDep
) -> dict[str, Any]:
    """Answer an item: a final ``label``, or ``clarify: true`` with a ``note``.

    409 if the item was already answered (answers are never overwritten) or another
    reviewer holds it.
    """
    item = service.store.get_item(item_id)
    label = check_answer(service.classifiers, item, body.label, body.clarify)
    return service.store.answer(
        item_id, f"token:{token.name}", label=label, clarify=body.clarify, note=body.note
    ).to_dict()
