"""The review service: an HTTP API for classification and the review queue's web pages.

:func:`create_app` builds a FastAPI app around tasks, one shared backend and a
:class:`~surelabel.store.Store`. Classification runs on worker threads behind a bounded
queue (:mod:`surelabel.server.worker`); the event loop only waits for it. The parts:
:mod:`~surelabel.server.api` (``/v1``), :mod:`~surelabel.server.web` (the review pages),
:mod:`~surelabel.server.admin` (the admin pages), :mod:`~surelabel.server.ops` (health,
metrics, docs), :mod:`~surelabel.server.auth`, :mod:`~surelabel.server.middleware`,
:mod:`~surelabel.server.refit` (the self-calibrating loop); they share one
:class:`~surelabel.server.context.Service` through ``app.state``.
"""

# No ``from __future__ import annotations``: FastAPI reads the annotations at runtime.

import logging
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from surelabel.backends.base import Backend
from surelabel.calibration import Calibration
from surelabel.classifier import Calibrator, Classifier
from surelabel.errors import SurelabelError, UserError
from surelabel.server import admin, api, ops, web
from surelabel.server.auth import (
    LoginRequiredError,
    PasswordChangeRequiredError,
    to_login,
    to_password,
)
from surelabel.server.context import Service, Settings
from surelabel.server.errors import SafeJSONResponse, http_error, surelabel_error, validation_error
from surelabel.server.jobs import Jobs
from surelabel.server.metrics import Metrics
from surelabel.server.middleware import BodyLimitMiddleware, observe, security_headers
from surelabel.server.refit import CalibrationManager
from surelabel.server.review_settings import ReviewSettings
from surelabel.server.worker import WorkerPool
from surelabel.store import Store
from surelabel.task import Task

__all__ = ["Settings", "create_app"]

log = logging.getLogger("surelabel.server")


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
    review = {t.name: settings.review.get(t.name) or ReviewSettings.of(t) for t in task_list}
    pool = WorkerPool(workers=settings.workers, max_pending=settings.max_pending)
    base = _classifiers(task_list, backend, settings)
    static = _import_calibrations(store, base, settings)
    holder: dict[str, Service] = {}
    metrics = Metrics(lambda: ops.store_figures(holder["service"]))
    calibrations = CalibrationManager(
        store, backend, base, review, method=settings.method, reason=settings.reason,
        options=settings.method_options, static=static,
        on_refit=lambda task, outcome: metrics.refits.labels(task, outcome).inc(),
    )
    service = Service(
        store=store,
        settings=settings,
        backend=backend,
        classifiers=base,
        pool=pool,
        review=review,
        calibrations=calibrations,
        metrics=metrics,
        rng=random.Random(settings.audit_seed),
        jobs=Jobs(pool, settings.batch_limit),
    )
    holder["service"] = service

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool.start()
        yield
        service.jobs.stop()
        calibrations.stop()
        pool.stop()

    app = FastAPI(
        title="surelabel review service",
        summary="Classify text with calibrated confidence; people review the uncertain items.",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        default_response_class=SafeJSONResponse,
    )
    app.state.service = service
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes,
                       upload_limit=settings.max_upload_bytes, upload_paths=("/admin/upload",))
    app.middleware("http")(security_headers)
    app.middleware("http")(observe(metrics, settings.public_origins, settings.access_log))
    app.exception_handler(SurelabelError)(surelabel_error)
    app.exception_handler(RequestValidationError)(validation_error)
    app.exception_handler(StarletteHTTPException)(http_error)
    app.exception_handler(LoginRequiredError)(to_login)
    app.exception_handler(PasswordChangeRequiredError)(to_password)
    app.include_router(api.router)
    app.include_router(ops.router)
    app.include_router(web.router)
    app.include_router(admin.router)
    return app


def _classifiers(
    tasks: Sequence[Task], backend: Backend, settings: Settings
) -> dict[str, Classifier]:
    """One uncalibrated classifier per task (the calibration manager adds calibrations),
    checking that each configured calibration fits its task, model and method."""
    classifiers: dict[str, Classifier] = {}
    for task in tasks:
        if task.name in classifiers:
            raise UserError(f"two tasks are named {task.name!r}")
        classifiers[task.name] = Classifier(
            task, backend, method=settings.method, reason=settings.reason,
            options=settings.method_options,
        )
        calibrator = settings.calibrations.get(task.name, (None, ""))[0]
        # As `surelabel classify --calibration`: refuse a file made for another task, model
        # or prompt, or fitted on another method.
        if isinstance(calibrator, Calibration):
            source = f"the calibration of task {task.name!r}"
            calibrator.check(task, backend.model_name, source=source)
            calibrator.check_method(classifiers[task.name].method, source=source)
    return classifiers


def _import_calibrations(
    store: Store, base: dict[str, Classifier], settings: Settings
) -> dict[str, tuple[Calibrator, str]]:
    """Store each calibration file as a version of its task (activated when new); return
    the other calibrators, which are applied as given."""
    static: dict[str, tuple[Calibrator, str]] = {}
    for name, (calibrator, version_name) in settings.calibrations.items():
        if name not in base:
            raise UserError(f"a calibration is given for task {name!r}, which is not served")
        if not isinstance(calibrator, Calibration):
            static[name] = (calibrator, version_name)
            continue
        routing = calibrator.routing
        version, created = store.add_calibration(
            name, calibrator.to_dict(), source="file", actor="surelabel serve --calibration",
            method=calibrator.method, n_fitted=calibrator.n_fitted, fit_on="file",
            accept_threshold=None if routing is None else routing.accept_threshold,
            target_error=None if routing is None else routing.target_error,
            error_bound=None if routing is None else routing.error_upper_bound,
            note=f"{version_name} ({calibrator.source})",
        )
        if created:
            log.info("task %s: calibration file stored as version %s (active)", name, version)
    return static
