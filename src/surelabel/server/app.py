"""The review service: an HTTP API for classification and the review queue's web pages.

:func:`create_app` builds a FastAPI app around tasks, one shared backend and a
:class:`~surelabel.store.Store`. Classification runs on worker threads behind a bounded
queue (:mod:`surelabel.server.worker`); the event loop only waits for it.
"""

# No ``from __future__ import annotations``: FastAPI reads the annotations at runtime.

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from surelabel.backends.base import Backend
from surelabel.classifier import Calibrator, Classifier
from surelabel.errors import BackendError, SurelabelError, UserError
from surelabel.server.worker import QueueFullError, WorkerPool
from surelabel.store import ConflictError, Item, NotFoundError, Store, Token
from surelabel.task import Task

MAX_TEXT_CHARS = 20_000


@dataclass(frozen=True)
class Settings:
    """Limits and knobs of the service.

    Parameters
    ----------
    batch_limit:
        Most items in one classify request.
    max_pending:
        Most items waiting for the model; beyond it requests get 503 + ``Retry-After``.
    workers:
        Classification threads (the embedded model serializes evaluation anyway).
    max_body_bytes:
        Largest request body accepted (413 beyond).
    lease_seconds:
        How long a reviewer holds an item they opened.
    session_seconds:
        Lifetime of a reviewer's login.
    secure_cookies:
        Mark cookies ``Secure`` (set it when served over HTTPS).
    method, reason:
        Passed to :class:`~surelabel.classifier.Classifier`.
    calibrations:
        Per task name: ``(calibrator, version)``. The version is stored with every item.
        A calibration file (``surelabel.calibration.load``) also brings its guaranteed
        accept threshold and conformal label sets.
    """

    batch_limit: int = 32
    max_pending: int = 64
    workers: int = 1
    max_body_bytes: int = 1_000_000
    lease_seconds: float = 300.0
    session_seconds: float = 12 * 3600.0
    secure_cookies: bool = False
    method: str = "auto"
    reason: bool | None = None
    retry_after_seconds: int = 2
    calibrations: Mapping[str, tuple[Calibrator, str]] = field(default_factory=dict)


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(max_length=MAX_TEXT_CHARS, description="the text to classify")
    id: str | int | None = Field(
        default=None,
        description="client id; a retried request with the same id returns the stored item",
    )

    @field_validator("text")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text must not be empty or only whitespace")
        return v

    @field_validator("id")
    @classmethod
    def _id_length(cls, v: str | int | None) -> str | int | None:
        if v is not None and len(str(v)) > 200:
            raise ValueError("id must be at most 200 characters")
        return v


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[ItemIn] = Field(min_length=1)


class ReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str | list[str] | None = Field(
        default=None, description="the final label (a list for multilabel tasks)"
    )
    clarify: bool = Field(default=False, description="the item needs clarification")
    note: str | None = Field(default=None, max_length=5000)


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit`` bytes with 413, whether or not a length is sent."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                length = int(value) if value.isdigit() else None
        if length is not None:
            # The HTTP server holds the client to its Content-Length.
            if length > self.limit:
                await _too_large(send, self.limit)
                return
            await self.app(scope, receive, send)
            return
        # No length given (chunked): read at most `limit` bytes, then replay them.
        messages: list[Message] = []
        seen = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            seen += len(message.get("body", b""))
            if seen > self.limit:
                await _too_large(send, self.limit)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


async def _too_large(send: Send, limit: int) -> None:
    response = JSONResponse(
        {"detail": f"request body larger than {limit} bytes"}, status_code=413
    )
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:  # pragma: no cover - never called by JSONResponse
    return {"type": "http.disconnect"}


# Pages are strict: no inline script, no third-party anything. /docs is exempt (it loads
# Swagger UI's own assets).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


def create_app(
    tasks: Task | Sequence[Task],
    backend: Backend,
    store: Store,
    *,
    settings: Settings | None = None,
) -> FastAPI:
    """Build the service for ``tasks``, classifying with ``backend`` and storing in ``store``.

    The backend is shared by every request (one model load per process).
    """
    settings = settings or Settings()
    if settings.batch_limit > settings.max_pending:
        raise UserError("batch_limit must not exceed max_pending")
    task_list = [tasks] if isinstance(tasks, Task) else list(tasks)
    if not task_list:
        raise UserError("the service needs at least one task")
    classifiers: dict[str, Classifier] = {}
    for task in task_list:
        if task.name in classifiers:
            raise UserError(f"two tasks are named {task.name!r}")
        calibrator = settings.calibrations.get(task.name, (None, ""))[0]
        thresholds = task.thresholds
        # A calibration file from `surelabel calibrate` may carry a guaranteed accept
        # threshold; use it, as `surelabel classify --calibration` does.
        if calibrator is not None and hasattr(calibrator, "thresholds"):
            thresholds = calibrator.thresholds(thresholds)
        classifiers[task.name] = Classifier(
            task, backend, method=settings.method, reason=settings.reason,
            thresholds=thresholds, calibrator=calibrator,
        )
        # As `surelabel classify --calibration`: refuse a file fitted on another method.
        if calibrator is not None and hasattr(calibrator, "check_method"):
            calibrator.check_method(classifiers[task.name].method,
                                    source=f"the calibration of task {task.name!r}")
    pool = WorkerPool(workers=settings.workers, max_pending=settings.max_pending)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        pool.start()
        yield
        pool.stop()

    app = FastAPI(
        title="surelabel review service",
        summary="Classify text with calibrated confidence; people review the uncertain items.",
        version="1",
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.settings = settings
    app.state.classifiers = classifiers
    app.state.pool = pool
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if not request.url.path.startswith(("/docs", "/redoc", "/openapi.json")):
            response.headers.setdefault("Content-Security-Policy", CSP)
            response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    @app.exception_handler(SurelabelError)
    async def surelabel_error(request: Request, exc: SurelabelError) -> JSONResponse:
        if isinstance(exc, NotFoundError):
            status = 404
        elif isinstance(exc, ConflictError):
            status = 409
        elif isinstance(exc, UserError):
            status = 422
        elif isinstance(exc, BackendError):
            status = 503 if exc.retryable else 502
        else:
            status = 500
        return JSONResponse({"detail": str(exc)}, status_code=status)

    bearer = HTTPBearer(auto_error=False, description="API token from `surelabel tokens create`")

    def require(scope: str) -> Callable[..., Token]:
        def check(
            cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        ) -> Token:
            if cred is None:
                raise HTTPException(
                    401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"}
                )
            token = store.check_token(cred.credentials)
            if token is None:
                raise HTTPException(
                    401,
                    "invalid or revoked token",
                    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )
            if scope not in token.scopes:
                raise HTTPException(403, f"this token lacks the {scope!r} scope")
            return token

        return check

    CanRead = Annotated[Token, Depends(require("read"))]
    CanClassify = Annotated[Token, Depends(require("classify"))]
    CanReview = Annotated[Token, Depends(require("review"))]

    def classifier_for(task: str) -> Classifier:
        try:
            return classifiers[task]
        except KeyError:
            raise HTTPException(404, f"no task {task!r}") from None

    def classify_and_store(task: str, batch: list[ItemIn]) -> list[dict[str, Any]]:
        classifier = classifiers[task]
        _, version = settings.calibrations.get(task, (None, None))
        out: list[dict[str, Any]] = []
        for entry in batch:
            if entry.id is not None:
                known = store.find_item(task, str(entry.id))
                if known is not None:
                    out.append(known.to_dict())
                    continue
            record = classifier.classify_one(entry.text, entry.id).to_dict()
            item, _created = store.add_item(task, record, calibration=version)
            out.append(item.to_dict())
        return out

    @app.get("/v1/tasks", tags=["api"])
    def list_tasks(_: CanRead) -> dict[str, Any]:
        """The tasks this service classifies, with item counts per band."""
        return {
            "tasks": [
                {
                    "name": c.task.name,
                    "kind": c.task.kind,
                    "labels": list(c.task.label_names),
                    "thresholds": {"accept": c.thresholds.accept, "clarify": c.thresholds.clarify},
                    "method": c.method,
                    "model": backend.model_name,
                    "counts": store.count_items(c.task.name),
                }
                for c in classifiers.values()
            ]
        }

    @app.post("/v1/tasks/{task}/classify", tags=["api"])
    async def classify(
        task: str,
        body: ItemIn | BatchIn,
        _: CanClassify,
    ) -> Any:
        """Classify one item (``{"text", "id"}``) or a batch (``{"items": [...]}``).

        Every item is stored with its prediction. An item whose ``id`` is already stored for
        the task is not classified again: the stored record is returned.
        """
        classifier_for(task)
        batch = body.items if isinstance(body, BatchIn) else [body]
        if len(batch) > settings.batch_limit:
            raise HTTPException(
                422, f"a batch holds at most {settings.batch_limit} items, got {len(batch)}"
            )
        try:
            future = pool.submit(lambda: classify_and_store(task, batch), weight=len(batch))
        except QueueFullError as exc:
            raise HTTPException(
                503,
                f"classification queue is full ({exc}); retry later",
                headers={"Retry-After": str(settings.retry_after_seconds)},
            ) from None
        records = await asyncio.wrap_future(future)
        return {"items": records} if isinstance(body, BatchIn) else records[0]

    @app.get("/v1/tasks/{task}/items", tags=["api"])
    def list_items(
        task: str,
        _: CanRead,
        decision: Literal["accept", "review", "clarify"] | None = None,
        status: Literal["auto", "open", "reviewed", "error"] | None = None,
        order: Literal["confidence", "oldest"] = "confidence",
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        """Stored items of a task; ``order=confidence`` lists the least confident first."""
        classifier_for(task)
        found = store.list_items(
            task, decision=decision, status=status, order=order, limit=limit, offset=offset
        )
        return {"items": [i.to_dict() for i in found]}

    @app.get("/v1/tasks/{task}/stats", tags=["api"])
    def task_stats(task: str, _: CanRead) -> dict[str, Any]:
        """Items per band, review throughput, model-reviewer agreement per confidence band."""
        classifier_for(task)
        return store.stats(task)

    @app.get("/v1/items/{item_id}", tags=["api"])
    def get_item(item_id: int, _: CanRead) -> dict[str, Any]:
        return store.get_item(item_id).to_dict()

    @app.post("/v1/items/{item_id}/review", tags=["api"])
    def review_item(
        item_id: int, body: ReviewIn, token: CanReview
    ) -> dict[str, Any]:
        """Answer an item: a final ``label``, or ``clarify: true`` with a ``note``.

        409 if the item was already answered (answers are never overwritten) or another
        reviewer holds it.
        """
        item = store.get_item(item_id)
        label = check_answer(classifiers, item, body.label, body.clarify)
        return store.answer(
            item_id, f"token:{token.name}", label=label, clarify=body.clarify, note=body.note
        ).to_dict()

    from surelabel.server.web import add_web_routes

    add_web_routes(app)
    return app


def check_answer(
    classifiers: Mapping[str, Classifier], item: Item, label: Any, clarify: bool
) -> Any:
    """The validated final label of an answer (None for clarify); 422 when it is not valid."""
    if clarify:
        if label is not None:
            raise HTTPException(422, "give either a label or clarify, not both")
        return None
    if label is None:
        raise HTTPException(422, "an answer needs a label, or clarify: true with a note")
    classifier = classifiers.get(item.task)
    if classifier is None:
        raise HTTPException(409, f"item {item.id} belongs to task {item.task!r}, not served here")
    names = classifier.task.label_names
    if classifier.task.kind == "multilabel":
        given = [label] if isinstance(label, str) else list(label)
        unknown = [x for x in given if x not in names]
        if unknown:
            raise HTTPException(422, f"unknown label(s) {unknown}; expected some of {list(names)}")
        return [x for x in names if x in given]
    if not isinstance(label, str) or label not in names:
        raise HTTPException(422, f"unknown label {label!r}; expected one of {list(names)}")
    return label
