"""The review pages: login, password change, queue (search and filters), item, undo, stats.

Item text is untrusted: templates autoescape everything, pages carry a strict
Content-Security-Policy (no inline script), every form carries a CSRF token (the
session's for logged-in forms, a double-submit cookie for the login form), and a form
posted from another origin is refused (:mod:`~surelabel.server.middleware`).
"""

# No ``from __future__ import annotations``: FastAPI reads the annotations at runtime.

import hmac
import logging
import math
import secrets
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, HTTPException, Path, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from surelabel.classifier import Classifier
from surelabel.errors import UserError
from surelabel.server.answers import check_answer, classifier_for
from surelabel.server.auth import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    check_csrf,
    need_session,
    need_task,
)
from surelabel.server.context import Service, ServiceDep
from surelabel.server.pages import (
    BAND_CHOICES,
    HERE,
    STATES,
    PageFilter,
    bar_chart,
    history_chart,
    render,
)
from surelabel.store import ConflictError, Item, QuotaReachedError, Session
from surelabel.store.items import MAX_ID, Order
from surelabel.store.security import new_password

STATIC = {"review.js": "text/javascript", "style.css": "text/css",
          "docs.js": "text/javascript"}
ItemId = Annotated[int, Path(ge=1, le=MAX_ID)]
log = logging.getLogger("surelabel.server")

router = APIRouter(include_in_schema=False)


@router.get("/static/{name}")
def static(name: str) -> Response:
    if name not in STATIC:
        raise HTTPException(404)
    return FileResponse(HERE / "static" / name, media_type=STATIC[name])


# -- logging in -------------------------------------------------------------------------


def _login_page(service: Service, next_: str, *, status: int = 200, error: str | None = None,
                headers: dict[str, str] | None = None, csrf: str | None = None) -> Response:
    """The login form; a new double-submit CSRF cookie unless ``csrf`` (the one the
    browser holds) is kept."""
    fresh = csrf is None
    csrf = csrf or secrets.token_urlsafe(32)
    response = render("login.html", status=status, headers=headers, csrf=csrf,
                      next=_safe_next(next_), error=error, user=None)
    if fresh:
        response.set_cookie(
            LOGIN_CSRF_COOKIE, csrf, httponly=True, samesite="strict",
            secure=service.settings.secure_cookies, max_age=3600,
        )
    return response


@router.get("/login")
def login_page(service: ServiceDep, next: str = "/review") -> Response:
    return _login_page(service, next)


@router.post("/login")
def login(
    request: Request,
    service: ServiceDep,
    username: str = Form(max_length=200),
    password: str = Form(max_length=500),
    csrf: str = Form(""),
    next: str = Form("/review"),
) -> Response:
    settings = service.settings
    store = service.store
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not csrf or not expected or not hmac.compare_digest(csrf, expected):
        raise HTTPException(403, "missing or wrong CSRF token; reload the login page")
    address = request.client.host if request.client else "unknown"
    wait = store.login_retry_after(username, address, settings.login)
    if wait > 0:
        seconds = math.ceil(wait)
        service.metrics.login_failures.labels("throttled").inc()
        log.warning("login throttled: user %r from %s (retry in %d s)", username, address,
                    seconds)
        return _login_page(service, next, status=429, headers={"Retry-After": str(seconds)},
                           error=f"Too many failed logins. Try again in {seconds} seconds.",
                           csrf=csrf)
    user = store.authenticate(username, password)
    if user is None:
        locked = store.record_login_failure(username, address, settings.login)
        service.metrics.login_failures.labels("locked" if locked else "wrong").inc()
        log.warning("login failed: user %r from %s", username, address)
        if locked:
            log.warning("account %r locked for %.0f s after %d failed logins", username,
                        settings.login.lockout_seconds, settings.login.lockout_after)
        return _login_page(service, next, status=401, error="Wrong user name or password.",
                           csrf=csrf)
    store.record_login_success(user.name)
    log.info("login: %s from %s", user.name, address)
    target = _safe_next(next)
    if user.must_change_password:
        target = f"/account/password?next={quote(target)}"
    return _with_session(service, user, target)


def _with_session(service: Service, user: Any, target: str) -> Response:
    settings = service.settings
    cookie, _session = service.store.create_session(user, ttl=settings.session_seconds)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE, cookie, httponly=True, samesite="lax",
        secure=settings.secure_cookies, max_age=int(settings.session_seconds),
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE)
    return response


@router.post("/logout")
def logout(request: Request, service: ServiceDep, csrf: str = Form("")) -> Response:
    session = need_session(request, service.store, password_page=True)
    check_csrf(session, csrf)
    service.store.delete_session(request.cookies[SESSION_COOKIE])
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.get("/account/password")
def password_page(request: Request, service: ServiceDep, next: str = "/review") -> Response:
    session = need_session(request, service.store, password_page=True)
    return render("password.html", session=session, user=session.user, next=_safe_next(next),
                  error=None, suggestion=new_password())


@router.post("/account/password")
def change_password(
    request: Request,
    service: ServiceDep,
    csrf: str = Form(""),
    current: str = Form(max_length=500),
    new: str = Form(max_length=500),
    repeat: str = Form(max_length=500),
    next: str = Form("/review"),
) -> Response:
    session = need_session(request, service.store, password_page=True)
    check_csrf(session, csrf)
    error = None
    if new != repeat:
        error = "The two new passwords differ."
    else:
        try:
            service.store.change_password(session.user.name, current, new)
        except UserError as exc:  # a wrong current password, or a weak new one
            error = str(exc)[:1].upper() + str(exc)[1:] + "."
    if error is not None:
        return render("password.html", status=422, session=session, user=session.user,
                      next=_safe_next(next), error=error, suggestion=new_password())
    log.info("password changed: %s", session.user.name)
    # Changing the password ended every session of the account, this one too.
    return _with_session(service, service.store.get_user(session.user.name), _safe_next(next))


# -- the queue --------------------------------------------------------------------------


@router.get("/")
def home() -> Response:
    return RedirectResponse("/review", status_code=303)


@router.get("/review")
def tasks_page(request: Request, service: ServiceDep) -> Response:
    session = need_session(request, service.store)
    rows = [
        {"task": c.task, "counts": service.store.count_items(name),
         "role": session.user.task_role(name)}
        for name, c in service.classifiers.items() if session.user.can_review(name)
    ]
    return render("tasks.html", session=session, user=session.user, rows=rows)


@router.get("/review/{task}")
def queue_page(request: Request, task: str, service: ServiceDep, order: str = "confidence",
               empty: int = 0, page: int = 1) -> Response:
    store = service.store
    session = need_session(request, store)
    classifier = classifier_for(service.classifiers, task)
    need_task(session, task)
    filt = PageFilter(request.query_params, classifier.task.label_names)
    page = max(1, min(page, 10_000))
    listing = filt.listing
    found = store.list_items(task, filters=listing, order=_order(order), limit=50,
                             offset=(page - 1) * 50)
    total = store.count_matching(task, listing)
    return render(
        "queue.html", session=session, user=session.user, task=classifier.task,
        counts=store.count_items(task), items=found, total=total, page=page,
        pages=max(1, math.ceil(total / 50)), order=_order(order), empty=bool(empty),
        now=store.clock(), f=filt.values, fq=filt.query, states=list(STATES),
        bands=BAND_CHOICES, review=service.review[task],
        undo=_undoable(service, session, task),
        can_adjudicate=session.user.can_adjudicate(task),
    )


@router.get("/review/{task}/next")
def next_item(request: Request, task: str, service: ServiceDep,
              order: str = "confidence") -> Response:
    session = need_session(request, service.store)
    classifier = classifier_for(service.classifiers, task)
    need_task(session, task)
    filt = PageFilter(request.query_params, classifier.task.label_names)
    order = _order(order)
    back = f"order={order}" + (f"&{filt.query}" if filt.query else "")
    try:
        item = service.store.claim_next(
            task, session.user.name, order=order, lease=service.settings.lease_seconds,
            filters=filt.base, adjudicate=session.user.can_adjudicate(task),
            quota=service.quota(task, session.user.quota(task)))
    except QuotaReachedError as exc:
        return render("message.html", status=429, session=session, user=session.user,
                      title="Quota reached", message=str(exc), back=f"/review/{quote(task)}")
    if item is None:
        return RedirectResponse(f"/review/{quote(task)}?{back}&empty=1", status_code=303)
    return RedirectResponse(f"/review/items/{item.id}?{back}", status_code=303)


@router.get("/review/items/{item_id}")
def item_page(request: Request, item_id: ItemId, service: ServiceDep,
              order: str = "confidence") -> Response:
    store = service.store
    session = need_session(request, store)
    item = store.get_item(item_id)  # NotFoundError: 404 (the app's error handler)
    classifier = classifier_for(service.classifiers, item.task)
    need_task(session, item.task)
    user = session.user
    adjudicating = item.status == "disputed" and user.can_adjudicate(item.task)
    answered = any(r.reviewer == user.name for r in store.reviews_of(item.id))
    # Open items are leased to whoever opens them; accepted ones can be spot-checked.
    held = not answered and (item.status == "auto" or (
        item.status in ("open", "disputed") and (item.status == "open" or adjudicating)
        and store.claim(item.id, user.name, lease=service.settings.lease_seconds,
                        adjudicate=adjudicating)))
    if held:
        item = store.get_item(item_id)
    return _item_view(service, session, item, classifier, held=held, order=order,
                      filters=_filters_of(request))


def _item_view(service: Service, session: Session, item: Item, classifier: Classifier, *,
               held: bool, order: str, filters: str, error: str | None = None,
               status: int = 200) -> Response:
    user = session.user
    answers = service.store.reviews_of(item.id)
    mine = next((r for r in answers if r.reviewer == user.name), None)
    adjudicating = item.status == "disputed" and user.can_adjudicate(item.task)
    # The audit sample is answered blind (no model answer to anchor on), as is every item
    # still waiting for independent answers: reviewers never see each other's labels.
    blind = item.audit and item.status in ("open", "auto") and not adjudicating
    show_answers = item.status == "reviewed" or adjudicating
    return render(
        "item.html", status=status, session=session, user=user, item=item,
        task=classifier.task, bars=_bars(item, classifier), held=held,
        order=_order(order), error=error, blind=blind, adjudicating=adjudicating,
        answers=answers if show_answers else [], mine=mine, filters=filters,
        undo=_undoable(service, session, item.task),
    )


def _filters_of(request: Request) -> str:
    keep = {k: v for k, v in request.query_params.items() if k in PageFilter.FIELDS and v}
    return urlencode(keep)


@router.post("/review/items/{item_id}")
def answer_item(
    request: Request,
    item_id: ItemId,
    service: ServiceDep,
    csrf: str = Form(""),
    choice: str = Form(max_length=300),
    labels: Annotated[list[str] | None, Form()] = None,
    note: str = Form("", max_length=5000),
    order: str = Form("confidence"),
    filters: str = Form("", max_length=2000),
) -> Response:
    store = service.store
    session = need_session(request, store)
    check_csrf(session, csrf)
    item = store.get_item(item_id)  # NotFoundError: 404 (the app's error handler)
    classifier = classifier_for(service.classifiers, item.task)
    need_task(session, item.task)
    adjudicate = item.status == "disputed"
    if adjudicate:
        need_task(session, item.task, adjudicate=True)
    label: Any = None
    clarify = False
    if choice == "accept":
        label = item.predicted
    elif choice == "clarify":
        clarify = True
    elif choice.startswith("label:"):
        label = choice[6:]
    elif choice == "labels":
        label = labels or []
    else:
        raise HTTPException(422, f"unknown choice {choice!r}")
    # The same checks as the API's review endpoint.
    label = check_answer(service.classifiers, item, label, clarify)
    user = session.user
    try:
        done = store.answer(item_id, user.name, label=label, clarify=clarify,
                            note=note.strip() or None, adjudicate=adjudicate,
                            quota=service.quota(item.task, user.quota(item.task)))
    except (ConflictError, QuotaReachedError) as exc:
        return _item_view(service, session, store.get_item(item_id), classifier, held=False,
                          order=order, filters=filters, error=str(exc),
                          status=409 if isinstance(exc, ConflictError) else 429)
    service.metrics.answers.labels(item.task, "adjudication" if adjudicate else "review").inc()
    if done.status == "reviewed":
        service.calibrations.note_settled(item.task)
    back = f"order={_order(order)}" + (f"&{filters}" if filters else "")
    return RedirectResponse(f"/review/{quote(item.task)}/next?{back}", status_code=303)


@router.post("/review/undo")
def undo(request: Request, service: ServiceDep, csrf: str = Form(""),
         task: str = Form("")) -> Response:
    """Take back the reviewer's last answer (within the undo window); the item reopens."""
    session = need_session(request, service.store)
    check_csrf(session, csrf)
    try:
        item = service.store.undo_last(session.user.name, within=service.settings.undo_seconds,
                                       task=task or None, lease=service.settings.lease_seconds)
    except ConflictError as exc:
        return render("message.html", status=409, session=session, user=session.user,
                      title="Cannot undo", message=str(exc), back="/review")
    log.info("undo: %s took back an answer on item %s", session.user.name, item.id)
    return RedirectResponse(f"/review/items/{item.id}", status_code=303)


def _undoable(service: Service, session: Session, task: str) -> Any:
    return service.store.last_answer(session.user.name, within=service.settings.undo_seconds,
                                     task=task)


# -- statistics -------------------------------------------------------------------------


@router.get("/stats")
def stats_page(request: Request, service: ServiceDep, task: str | None = None) -> Response:
    session = need_session(request, service.store)
    visible = [n for n in service.classifiers if session.user.can_review(n)]
    if not visible:
        raise HTTPException(403, f"{session.user.name} has no role for any task")
    name = task if task is not None and task in visible else visible[0]
    classifier = service.classifiers[name]
    stats = service.store.stats(name, labels=classifier.task.label_names)
    _, version = service.calibrations.classifier(name)
    return render(
        "stats.html", session=session, user=session.user, tasks=visible,
        task=classifier.task, stats=stats, chart=bar_chart(stats["agreement_by_confidence"]),
        audit_chart=bar_chart(stats["audit"]["bins"]),
        history=history_chart(stats["history"]),
        calibration=service.store.calibration_summary(name), applied=version,
        problem=service.calibrations.problems.get(name), review=service.review[name],
        thresholds=service.calibrations.classifier(name)[0].thresholds,
    )


def _order(order: str) -> Order:
    return "oldest" if order == "oldest" else "confidence"


def _safe_next(target: str) -> str:
    """Only same-site paths: no open redirect through ``?next=``."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/review"


def _bars(item: Item, classifier: Classifier) -> list[dict[str, Any]]:
    probs = item.record.get("probabilities") or {}
    predicted = item.predicted
    chosen = set(predicted) if isinstance(predicted, list) else {predicted}
    label_set = item.record.get("label_set") or []
    return [
        {
            "label": name,
            "p": probs.get(name),
            "width": round(240 * float(probs.get(name) or 0.0), 1),
            "predicted": name in chosen,
            "in_set": name in label_set,
            "key": i + 1 if i < 9 else None,
        }
        for i, name in enumerate(classifier.task.label_names)
    ]
