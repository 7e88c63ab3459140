"""What the service's routes share: the :class:`Settings` and one :class:`Service` per app.

:func:`~surelabel.server.app.create_app` puts the :class:`Service` on ``app.state``; routes
receive it through the :data:`ServiceDep` dependency.
"""

# No ``from __future__ import annotations``: FastAPI reads the annotations at runtime.

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from surelabel.backends.base import Backend
from surelabel.classifier import Calibrator, Classifier
from surelabel.methods import MethodOptions
from surelabel.server.worker import WorkerPool
from surelabel.store import Store


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
    method, reason, method_options:
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
    method_options: MethodOptions | None = None
    retry_after_seconds: int = 2
    calibrations: Mapping[str, tuple[Calibrator, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Service:
    """One app's parts: its store, settings, shared backend, a classifier per task, workers."""

    store: Store
    settings: Settings
    backend: Backend
    classifiers: Mapping[str, Classifier]
    pool: WorkerPool


def get_service(request: Request) -> Service:
    """The :class:`Service` of the app serving ``request``."""
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]
