"""The error tree mapped to HTTP status codes, and JSON that never fails to encode.

Text from clients may hold lone surrogates (``"\\ud800"`` is legal JSON but not UTF-8).
Such input is refused with 422, and :class:`SafeJSONResponse` escapes what it cannot
encode, so writing an error about bad input can never fail in turn (which used to turn a
422 into a 500 and reset the connection).
"""

# No ``from __future__ import annotations``: FastAPI reads the annotations at runtime.

import json
from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from surelabel.errors import BackendError, SurelabelError, UserError
from surelabel.store import ConflictError, NotFoundError, QuotaReachedError


class SafeJSONResponse(JSONResponse):
    """JSON as UTF-8; strings that are not valid Unicode are written as ``\\u`` escapes."""

    def render(self, content: Any) -> bytes:
        try:
            return json.dumps(content, ensure_ascii=False, allow_nan=False,
                              separators=(",", ":")).encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False,
                              separators=(",", ":")).encode("ascii")


def status_of(exc: SurelabelError) -> int:
    """404 no such thing, 409 conflict, 429 quota, 422 user mistake, 503/502 back end,
    else 500."""
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ConflictError):
        return 409
    if isinstance(exc, QuotaReachedError):
        return 429
    if isinstance(exc, UserError):
        return 422
    if isinstance(exc, BackendError):
        return 503 if exc.retryable else 502
    return 500


async def surelabel_error(request: Request, exc: SurelabelError) -> Response:
    """The exception handler for :class:`~surelabel.errors.SurelabelError`."""
    return SafeJSONResponse({"detail": str(exc)}, status_code=status_of(exc))


async def validation_error(request: Request, exc: RequestValidationError) -> Response:
    """422 for malformed requests (FastAPI's own answer, written safely)."""
    return SafeJSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    headers = getattr(exc, "headers", None)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=headers)
    return SafeJSONResponse({"detail": exc.detail}, status_code=exc.status_code,
                            headers=headers)
