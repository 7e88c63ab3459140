"""What the service's routes share: the :class:`Settings` and one :class:`Service` per app.

:func:`~surelabel.server.app.create_app` puts the :class:`Service` on ``app.state``; routes
receive it through the :data:`ServiceDep` dependency.
"""

# No ``from __future__ import annotations``: FastAPI reads the annotations at runtime.

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from surelabel.backends.base import Backend
from surelabel.classifier import Calibrator, Classifier
from surelabel.methods import MethodOptions
from surelabel.server.jobs import Jobs
from surelabel.server.metrics import Metrics
from surelabel.server.refit import CalibrationManager
from surelabel.server.review_settings import ReviewSettings
from surelabel.server.worker import WorkerPool
from surelabel.store import LoginLimits, Store

log = logging.getLogger("surelabel.server")


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
        Largest request body accepted (413 beyond); ``max_upload_bytes`` for the admin
        upload page.
    lease_seconds:
        How long a reviewer holds an item they opened.
    session_seconds:
        Lifetime of a reviewer's login.
    secure_cookies:
        Mark cookies ``Secure`` (set it when served over HTTPS).
    method, reason, method_options:
        Passed to :class:`~surelabel.classifier.Classifier`.
    calibrations:
        Per task name: ``(calibrator, version)``. A calibration file
        (``surelabel.calibration.load``) is stored as a calibration version of the task
        (once: the same file again changes nothing) and activated when it is new; any
        other calibrator is applied as it is, under the given version name.
    review:
        Per task name, :class:`ReviewSettings` that replace the task file's ``review:``.
    login:
        Login throttling and lockout.
    undo_seconds:
        How long a reviewer may take back their last answer.
    docs:
        Serve the API docs (Swagger UI from the installed ``swagger-ui-bundle``) at /docs.
    public_origins:
        Origins (``https://review.example.org``) a form may be posted from besides the one
        the request names in its Host header (a TLS-terminating proxy in front).
    audit_seed:
        Seed of the audit-sample draw (None: unpredictable).
    access_log:
        Log one JSON line per request to the ``surelabel.access`` logger.
    """

    batch_limit: int = 32
    max_pending: int = 64
    workers: int = 1
    max_body_bytes: int = 1_000_000
    max_upload_bytes: int = 50_000_000
    lease_seconds: float = 300.0
    session_seconds: float = 12 * 3600.0
    secure_cookies: bool = False
    method: str = "auto"
    reason: bool | None = None
    method_options: MethodOptions | None = None
    retry_after_seconds: int = 2
    calibrations: Mapping[str, tuple[Calibrator, str]] = field(default_factory=dict)
    review: Mapping[str, ReviewSettings] = field(default_factory=dict)
    login: LoginLimits = field(default_factory=LoginLimits)
    undo_seconds: float = 120.0
    docs: bool = True
    public_origins: tuple[str, ...] = ()
    audit_seed: int | None = None
    access_log: bool = True


@dataclass(frozen=True)
class Service:
    """One app's parts: its store, settings, shared backend, a classifier per task (the
    uncalibrated base; :attr:`calibrations` gives the one with the active calibration),
    each task's review settings, workers, metrics and upload jobs."""

    store: Store
    settings: Settings
    backend: Backend
    classifiers: Mapping[str, Classifier]
    pool: WorkerPool
    review: Mapping[str, ReviewSettings]
    calibrations: CalibrationManager
    metrics: Metrics
    rng: random.Random
    jobs: Jobs

    def quota(self, task: str, user_quota: int | None) -> int | None:
        return user_quota if user_quota is not None else self.review[task].quota


def get_service(request: Request) -> Service:
    """The :class:`Service` of the app serving ``request``."""
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]
