"""The review service: an HTTP API for classification and the review queue's web pages.

:func:`create_app` builds a FastAPI app around tasks, one shared backend and a
:class:`~surelabel.store.Store`. Classification runs on worker threads behind a bounded
queue (:mod:`surelabel.server.worker`); the event loop only waits for it. The parts:
:mod:`~surelabel.server.api` (``/v1``), :mod:`~surelabel.server.web` (the pages),
:mod:`~surelabel.server.auth`, :mod:`~surelabel.server.middleware`; they share one
:class:`~surelabel.server.context.Service` through ``app.state``.
"""

# No ``from __future__ import annotations``: FastAPI reads the annotations at runtime.

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI

from surelabel.backends.base import Backend
from surelabel.classifier import Classifier
from surelabel.errors import SurelabelError, UserError
from surelabel.server import api, web
from surelabel.server.auth import LoginRequiredError, to_login
from surelabel.server.context import Service, Settings
from surelabel.server.errors import surelabel_error
from surelabel.server.middleware import BodyLimitMiddleware, security_headers
from surelabel.server.worker import WorkerPool
from surelabel.store import Store
from surelabel.task import Task

__all__ = ["Settings", "create_app"]


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
    pool = WorkerPool(workers=settings.workers, max_pending=settings.max_pending)
    service = Service(
        store=store,
        settings=settings,
        backend=backend,
        classifiers=_classifiers(task_list, backend, settings),
        pool=pool,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool.start()
        yield
        pool.stop()

    app = FastAPI(
        title="surelabel review service",
        summary="Classify text with calibrated confidence; people review the uncertain items.",
        version="1",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.middleware("http")(security_headers)
    app.exception_handler(SurelabelError)(surelabel_error)
    app.exception_handler(LoginRequiredError)(to_login)
    app.include_router(api.router)
    app.include_router(web.router)
    return app


def _classifiers(
    tasks: Sequence[Task], backend: Backend, settings: Settings
) -> dict[str, Classifier]:
    """One classifier per task, with the task's calibration when one is configured."""
    classifiers: dict[str, Classifier] = {}
    for task in tasks:
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
            thresholds=thresholds, calibrator=calibrator, options=settings.method_options,
        )
        # As `surelabel classify --calibration`: refuse a file fitted on another method.
        if calibrator is not None and hasattr(calibrator, "check_method"):
            calibrator.check_method(classifiers[task.name].method,
                                    source=f"the calibration of task {task.name!r}")
    return classifiers
