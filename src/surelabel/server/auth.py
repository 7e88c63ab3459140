"""Who is calling: API tokens (bearer) for ``/v1``, session cookies and CSRF for the pages."""

# No ``from __future__ import annotations``: FastAPI reads the annotations at runtime.

import hmac
from collections.abc import Callable
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from surelabel.server.context import ServiceDep
from surelabel.store import Session, Store, Token

SESSION_COOKIE = "surelabel_session"
LOGIN_CSRF_COOKIE = "surelabel_login_csrf"

bearer = HTTPBearer(auto_error=False, description="API token from `surelabel tokens create`")


def require(scope: str) -> Callable[..., Token]:
    """A dependency: the caller's API token, which must carry ``scope`` (401/403 otherwise)."""

    def check(
        cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        service: ServiceDep,
    ) -> Token:
        if cred is None:
            raise HTTPException(
                401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"}
            )
        token = service.store.check_token(cred.credentials)
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


class LoginRequiredError(Exception):
    """A page needs a logged-in reviewer; answered with a redirect to the login page."""


def session_of(request: Request, store: Store) -> Session | None:
    cookie = request.cookies.get(SESSION_COOKIE)
    return store.get_session(cookie) if cookie else None


def need_session(request: Request, store: Store) -> Session:
    """The reviewer's session; raises :class:`LoginRequiredError` without one."""
    session = session_of(request, store)
    if session is None:
        raise LoginRequiredError
    return session


def check_csrf(session: Session, token: str | None) -> None:
    if not token or not hmac.compare_digest(token, session.csrf):
        raise HTTPException(403, "missing or wrong CSRF token; reload the page")


async def to_login(request: Request, exc: LoginRequiredError) -> Response:
    """The exception handler for :class:`LoginRequiredError`: log in, then come back."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target)}", status_code=303)
