"""Classifying and storing items, for the API and for uploads (on a worker thread).

Every item is stored with its record, the calibration version that made its confidence,
its raw label log-probabilities (what a refit learns from) and whether it was drawn into
the audit sample. An item already stored (same client id; or, when the task asks, same
text without an id) is returned as stored, without running the model again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from surelabel import methods
from surelabel.classifier import Record
from surelabel.errors import BackendError
from surelabel.evaluate import result_logprobs
from surelabel.server.context import Service
from surelabel.store import Item
from surelabel.store.items import content_hash

#: One item to classify: (client id or None, text).
Entry = tuple[Any, Any]


def classify_and_store(service: Service, task: str,
                       batch: Sequence[Entry]) -> list[tuple[Item, bool]]:
    """Classify and store ``batch``; returns each stored item and whether it is new."""
    store = service.store
    settings = service.review[task]
    classifier, version = service.calibrations.classifier(task)
    # The classifier's own input check, so an upload's bad row gets the error record that
    # `surelabel classify` would write.
    problem = classifier._input_error
    out: list[tuple[Item, bool] | None] = [None] * len(batch)
    todo: list[int] = []
    digests: dict[int, str] = {}
    for i, (id_, text) in enumerate(batch):
        known = None
        if id_ is not None:
            known = store.find_item(task, str(id_))
        elif settings.dedupe and problem(text) is None:
            digests[i] = content_hash(text)
            known = store.find_by_hash(task, digests[i])
        if known is not None:
            out[i] = (known, False)
        else:
            todo.append(i)
    runnable = [i for i in todo if problem(batch[i][1]) is None]
    results = methods.run_batch(
        classifier.method, classifier.backend, classifier.task,
        [batch[i][1] for i in runnable], classifier.reason, classifier.options,
    ) if runnable else []
    outcome: dict[int, methods.MethodResult | BackendError] = dict(zip(runnable, results))
    method, model = classifier.method, classifier.backend.model_name
    for i in todo:
        id_, text = batch[i]
        result = outcome.get(i)
        logprobs = None
        if result is None:
            record = Record(id=id_, text=text, error=problem(text), method=method,
                            model=model).to_dict()
        elif isinstance(result, BackendError):
            record = Record(id=id_, text=text, error=f"{type(result).__name__}: {result}",
                            method=method, model=model).to_dict()
        else:
            record = classifier.to_record(result, id=id_, text=text).to_dict()
            logprobs = result_logprobs(result).tolist()
        audit = not record.get("error") and service.rng.random() < settings.audit
        item, created = store.add_item(
            task, record, calibration=version, reviews_needed=settings.reviews_per_item,
            audit=audit, content_hash=digests.get(i), logprobs=logprobs,
        )
        if created:
            service.metrics.classified.labels(task, item.decision or "error").inc()
        out[i] = (item, created)
    return [x for x in out if x is not None]


def upload_batch(service: Service, task: str, rows: Sequence[Any],
                 with_ids: bool) -> list[str]:
    """Classify a batch of uploaded :class:`~surelabel.io.Row` s; one outcome per row."""
    entries = [(row.id if with_ids else None, row.text) for row in rows]
    return [
        "known" if not created else ("error" if item.status == "error" else "new")
        for item, created in classify_and_store(service, task, entries)
    ]
