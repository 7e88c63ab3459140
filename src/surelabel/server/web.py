"""The review queue's web pages: login, queue, item, stats.

Item text is untrusted: templates autoescape everything, pages carry a strict
Content-Security-Policy (no inline script), and every form carries a CSRF token (the
session's for logged-in forms, a double-submit cookie for the login form).
"""

# No ``from __future__ import annotations``: FastAPI reads the annotations at runtime.

import functools
import hmac
import secrets
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from surelabel.classifier import Classifier
from surelabel.server.answers import check_answer, classifier_for
from surelabel.server.auth import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    check_csrf,
    need_session,
)
from surelabel.server.context import ServiceDep
from surelabel.store import ConflictError, Item
from surelabel.store.items import Order

HERE = Path(__file__).parent
STATIC = {"review.js": "text/javascript", "style.css": "text/css"}

router = APIRouter(include_in_schema=False)


@functools.cache
def _env() -> Environment:
    """The templates (loaded on first use; one environment serves every app)."""
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"], default=True),
    )
    env.filters["pct"] = lambda p: f"{100 * p:.0f}%" if isinstance(p, (int, float)) else "–"
    env.filters["prob"] = lambda p: f"{p:.3f}" if isinstance(p, (int, float)) else "–"
    return env


def render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(_env().get_template(name).render(**context), status_code=status)


@router.get("/static/{name}")
def static(name: str) -> Response:
    if name not in STATIC:
        raise HTTPException(404)
    return FileResponse(HERE / "static" / name, media_type=STATIC[name])


@router.get("/login")
def login_page(request: Request, service: ServiceDep, next: str = "/review") -> Response:
    csrf = secrets.token_urlsafe(32)
    response = render("login.html", csrf=csrf, next=_safe_next(next), error=None, user=None)
    response.set_cookie(
        LOGIN_CSRF_COOKIE, csrf, httponly=True, samesite="strict",
        secure=service.settings.secure_cookies, max_age=3600,
    )
    return response


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
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not csrf or not expected or not hmac.compare_digest(csrf, expected):
        raise HTTPException(403, "missing or wrong CSRF token; reload the login page")
    user = service.store.authenticate(username, password)
    if user is None:
        return render("login.html", status=401, csrf=csrf, next=_safe_next(next),
                      error="Wrong user name or password.", user=None)
    cookie, _session = service.store.create_session(user, ttl=settings.session_seconds)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE, cookie, httponly=True, samesite="lax",
        secure=settings.secure_cookies, max_age=int(settings.session_seconds),
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE)
    return response


@router.post("/logout")
def logout(request: Request, service: ServiceDep, csrf: str = Form("")) -> Response:
    session = need_session(request, service.store)
    check_csrf(session, csrf)
    service.store.delete_session(request.cookies[SESSION_COOKIE])
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.get("/")
def home() -> Response:
    return RedirectResponse("/review", status_code=303)


@router.get("/review")
def tasks_page(request: Request, service: ServiceDep) -> Response:
    session = need_session(request, service.store)
    rows = [
        {"task": c.task, "counts": service.store.count_items(name)}
        for name, c in service.classifiers.items()
    ]
    return render("tasks.html", session=session, user=session.user, rows=rows)


@router.get("/review/{task}")
def queue_page(request: Request, task: str, service: ServiceDep, order: str = "confidence",
               empty: int = 0) -> Response:
    store = service.store
    session = need_session(request, store)
    classifier = classifier_for(service.classifiers, task)
    open_items = store.list_items(task, status="open", order=_order(order), limit=100)
    return render(
        "queue.html", session=session, user=session.user, task=classifier.task,
        counts=store.count_items(task), items=open_items, order=_order(order),
        empty=bool(empty),
        now=store.clock(),
    )


@router.get("/review/{task}/next")
def next_item(request: Request, task: str, service: ServiceDep,
              order: str = "confidence") -> Response:
    session = need_session(request, service.store)
    classifier_for(service.classifiers, task)
    order = _order(order)
    item = service.store.claim_next(task, session.user.name, order=order,
                                    lease=service.settings.lease_seconds)
    if item is None:
        return RedirectResponse(
            f"/review/{quote(task)}?{urlencode({'order': order, 'empty': 1})}",
            status_code=303,
        )
    return RedirectResponse(f"/review/items/{item.id}?order={order}", status_code=303)


@router.get("/review/items/{item_id}")
def item_page(request: Request, item_id: int, service: ServiceDep,
              order: str = "confidence") -> Response:
    store = service.store
    session = need_session(request, store)
    item = store.get_item(item_id)  # NotFoundError: 404 (the app's error handler)
    classifier = classifier_for(service.classifiers, item.task)
    # Open items are leased to whoever opens them; accepted ones can be spot-checked.
    held = item.status == "auto" or (item.status == "open" and store.claim(
        item.id, session.user.name, lease=service.settings.lease_seconds
    ))
    if held:
        item = store.get_item(item_id)
    return render(
        "item.html", session=session, user=session.user, item=item,
        task=classifier.task, bars=_bars(item, classifier), held=held,
        order=_order(order), error=None,
    )


@router.post("/review/items/{item_id}")
def answer_item(
    request: Request,
    item_id: int,
    service: ServiceDep,
    csrf: str = Form(""),
    choice: str = Form(max_length=300),
    labels: Annotated[list[str] | None, Form()] = None,
    note: str = Form("", max_length=5000),
    order: str = Form("confidence"),
) -> Response:
    store = service.store
    session = need_session(request, store)
    check_csrf(session, csrf)
    item = store.get_item(item_id)  # NotFoundError: 404 (the app's error handler)
    classifier = classifier_for(service.classifiers, item.task)
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
    try:
        store.answer(item_id, session.user.name, label=label, clarify=clarify,
                     note=note.strip() or None)
    except ConflictError as exc:
        return render(
            "item.html", status=409, session=session, user=session.user,
            item=store.get_item(item_id), task=classifier.task,
            bars=_bars(item, classifier), held=False, order=_order(order), error=str(exc),
        )
    return RedirectResponse(
        f"/review/{quote(item.task)}/next?order={_order(order)}", status_code=303
    )


@router.get("/stats")
def stats_page(request: Request, service: ServiceDep, task: str | None = None) -> Response:
    session = need_session(request, service.store)
    classifiers = service.classifiers
    name = task if task is not None and task in classifiers else next(iter(classifiers))
    stats = service.store.stats(name)
    return render(
        "stats.html", session=session, user=session.user, tasks=list(classifiers),
        task=classifiers[name].task, stats=stats, chart=_chart(stats),
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


def _chart(stats: dict[str, Any]) -> dict[str, Any]:
    """Geometry of the agreement-per-confidence bar chart (drawn as inline SVG)."""
    width, height, left, bottom, top = 560, 240, 48, 36, 16
    bins = stats["agreement_by_confidence"]
    slot = (width - left - 8) / max(1, len(bins))
    plot_h = height - bottom - top
    bars = []
    for i, b in enumerate(bins):
        rate = b["rate"]
        h = 0.0 if rate is None else plot_h * rate
        bars.append({
            "x": round(left + i * slot + slot * 0.15, 1),
            "w": round(slot * 0.7, 1),
            "y": round(top + plot_h - h, 1),
            "h": round(h, 1),
            "cx": round(left + i * slot + slot / 2, 1),
            "label": f"{b['low']:.1f}–{b['high']:.1f}",
            "rate": rate,
            "n": b["n"],
        })
    ticks = [
        {"y": round(top + plot_h * (1 - t), 1), "label": f"{int(t * 100)}%"}
        for t in (0.0, 0.25, 0.5, 0.75, 1.0)
    ]
    return {"width": width, "height": height, "left": left, "top": top, "bottom": bottom,
            "plot_h": plot_h, "bars": bars, "ticks": ticks, "axis_y": top + plot_h}
