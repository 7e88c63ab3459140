"""Who is calling: API tokens (bearer) for ``/v1``, session cookies, CSRF and origin
checks for the pages, task roles for both."""

# No ``from __future__ import annotations``: FastAPI reads the annotations at runtime.

import hmac
from collections.abc import Callable, Sequence
from typing import Annotated
from urllib.parse import quote, urlsplit

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
        request: Request,
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
        request.state.actor = f"token:{token.name}"
        if scope not in token.scopes:
            raise HTTPException(403, f"this token lacks the {scope!r} scope")
        task = request.path_params.get("task")
        if task is not None:
            allow_task(token, task)
        return token

    return check


def allow_task(token: Token, task: str) -> None:
    """403 unless the token may act on ``task`` (a task-scoped token: only its own)."""
    if not token.allows(task):
        raise HTTPException(403, f"this token is limited to task {token.task!r}")


CanRead = Annotated[Token, Depends(require("read"))]
CanClassify = Annotated[Token, Depends(require("classify"))]
CanReview = Annotated[Token, Depends(require("review"))]
CanAdjudicate = Annotated[Token, Depends(require("adjudicate"))]
CanAdmin = Annotated[Token, Depends(require("admin"))]
CanScrape = Annotated[Token, Depends(require("metrics"))]


def reviewer_of(token: Token) -> str:
    """The name an API token's answers are recorded under."""
    return f"token:{token.name}"


class LoginRequiredError(Exception):
    """A page needs a logged-in reviewer; answered with a redirect to the login page."""


class PasswordChangeRequiredError(Exception):
    """The account logged in with a one-time password; it must choose its own first."""


def session_of(request: Request, store: Store) -> Session | None:
    cookie = request.cookies.get(SESSION_COOKIE)
    session = store.get_session(cookie) if cookie else None
    if session is not None:
        request.state.actor = session.user.name
    return session


def need_session(request: Request, store: Store, *, password_page: bool = False) -> Session:
    """The reviewer's session; raises :class:`LoginRequiredError` without one, and
    :class:`PasswordChangeRequiredError` while a one-time password is in use."""
    session = session_of(request, store)
    if session is None:
        raise LoginRequiredError
    if session.user.must_change_password and not password_page:
        raise PasswordChangeRequiredError
    return session


def need_admin(session: Session) -> None:
    if not session.user.is_admin:
        raise HTTPException(403, "this page is for admins")


def need_task(session: Session, task: str, *, adjudicate: bool = False) -> None:
    """403 unless the user holds a role for ``task`` (an adjudicator's, if asked)."""
    user = session.user
    if adjudicate and not user.can_adjudicate(task):
        raise HTTPException(403, f"{user.name} is not an adjudicator of task {task!r}")
    if not user.can_review(task):
        raise HTTPException(403, f"{user.name} has no role for task {task!r}")


def check_csrf(session: Session, token: str | None) -> None:
    if not token or not hmac.compare_digest(token, session.csrf):
        raise HTTPException(403, "missing or wrong CSRF token; reload the page")


def _origin(url: str) -> str | None:
    """``scheme://host[:port]`` of a URL, lower case, default ports dropped."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if not parts.scheme or not parts.netloc:
        return None
    host = parts.netloc.lower().rsplit("@", 1)[-1]
    default = {"http": ":80", "https": ":443"}.get(parts.scheme.lower())
    if default and host.endswith(default):
        host = host[: -len(default)]
    return f"{parts.scheme.lower()}://{host}"


def foreign_origin(request: Request, public: Sequence[str]) -> str | None:
    """The origin a state-changing form post came from, when it is not this service's.

    Browsers send ``Origin`` with every POST (``Referer`` where an old one does not); a
    value naming another site (or ``null``, a sandboxed or privacy-stripped document) is
    refused even with a valid CSRF token. A request with neither header (not a browser)
    is left to the CSRF token.
    """
    claimed = request.headers.get("origin")
    if claimed is None:
        referer = request.headers.get("referer")
        if referer is None:
            return None
        claimed = _origin(referer) or "null"
    allowed = {_origin(f"{request.url.scheme}://{request.headers.get('host', '')}")}
    allowed.update(_origin(p) for p in public)
    return None if _origin(claimed) in allowed - {None} else claimed


async def to_login(request: Request, exc: LoginRequiredError) -> Response:
    """The exception handler for :class:`LoginRequiredError`: log in, then come back."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target)}", status_code=303)


async def to_password(request: Request, exc: PasswordChangeRequiredError) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/account/password?next={quote(target)}", status_code=303)
