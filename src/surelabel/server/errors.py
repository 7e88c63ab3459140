"""The error tree mapped to HTTP status codes, at the service's boundary."""

# No ``from __future__ import annotations``: FastAPI reads the annotations at runtime.

from fastapi import Request
from fastapi.responses import JSONResponse

from surelabel.errors import BackendError, SurelabelError, UserError
from surelabel.store import ConflictError, NotFoundError


def status_of(exc: SurelabelError) -> int:
    """404 no such thing, 409 conflict, 422 user mistake, 503/502 back end, else 500."""
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ConflictError):
        return 409
    if isinstance(exc, UserError):
        return 422
    if isinstance(exc, BackendError):
        return 503 if exc.retryable else 502
    return 500


async def surelabel_error(request: Request, exc: SurelabelError) -> JSONResponse:
    """The exception handler for :class:`~surelabel.errors.SurelabelError`."""
    return JSONResponse({"detail": str(exc)}, status_code=status_of(exc))
