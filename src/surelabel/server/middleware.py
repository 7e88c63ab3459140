"""What every request goes through: the body limit, the origin check of form posts,
metrics and the access log, and the security headers."""

# No ``from __future__ import annotations``: Starlette reads the annotations at runtime.

import secrets
import time
from collections.abc import Awaitable, Callable, Sequence

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from surelabel.server.auth import foreign_origin
from surelabel.server.metrics import Metrics, log_access

# Every page, /docs included, is strict: no inline script, no third-party anything.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
UNSAFE = ("POST", "PUT", "PATCH", "DELETE")


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit`` bytes with 413, whether or not a length is sent
    (``upload_limit`` for paths under ``upload_paths``)."""

    def __init__(self, app: ASGIApp, limit: int, upload_limit: int | None = None,
                 upload_paths: Sequence[str] = ()) -> None:
        self.app = app
        self.limit = limit
        self.upload_limit = upload_limit or limit
        self.upload_paths = tuple(upload_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = (self.upload_limit if self.upload_paths
                 and scope.get("path", "").startswith(self.upload_paths) else self.limit)
        length = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                length = int(value) if value.isdigit() else None
        if length is not None:
            # The HTTP server holds the client to its Content-Length.
            if length > limit:
                await _too_large(send, limit)
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
            if seen > limit:
                await _too_large(send, limit)
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


def observe(metrics: Metrics, public_origins: Sequence[str], access: bool
            ) -> Callable[[Request, Callable[[Request], Awaitable[Response]]],
                          Awaitable[Response]]:
    """The middleware that refuses cross-site form posts and measures and logs requests."""

    async def middleware(request: Request,
                         call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        request_id = request.headers.get("x-request-id", "")[:64] or secrets.token_hex(8)
        path = request.url.path
        foreign = (foreign_origin(request, public_origins)
                   if request.method in UNSAFE and not path.startswith("/v1/") else None)
        if foreign is not None:
            response: Response = JSONResponse(
                {"detail": f"form posted from another site ({foreign[:100]}); refused"},
                status_code=403)
        else:
            response = await call_next(request)
        seconds = time.perf_counter() - start
        route = getattr(request.scope.get("route"), "path", None) or (
            "/static" if path.startswith(("/static/", "/docs/static/")) else "(unmatched)")
        metrics.observe(request.method, route, response.status_code, seconds)
        response.headers["X-Request-ID"] = request_id
        if access:
            log_access(method=request.method, path=path, route=route,
                       status=response.status_code, seconds=seconds,
                       client=request.client.host if request.client else None,
                       actor=getattr(request.state, "actor", None), request_id=request_id,
                       length=response.headers.get("content-length"))
        return response

    return middleware


async def security_headers(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Headers every response carries: the CSP, no framing, no sniffing."""
    response = await call_next(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Frame-Options", "DENY")
    return response
