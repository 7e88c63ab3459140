"""The admin pages (accounts with the ``admin`` role): users and their task roles, API
tokens, uploading a file to classify into a task, exporting items, calibration versions.

Every form is a POST with the session's CSRF token (and the origin check of every form
post); a new password or token is shown once, on the page that made it.
"""

# No ``from __future__ import annotations``: FastAPI reads the annotations at runtime.

import csv
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, RedirectResponse, Response
from starlette.background import BackgroundTask

from surelabel.errors import CalibrationError, SurelabelError, UserError
from surelabel.io import OUTPUT_FORMATS, open_writer, read_rows
from surelabel.server.answers import classifier_for
from surelabel.server.auth import check_csrf, need_admin, need_session
from surelabel.server.context import Service, ServiceDep
from surelabel.server.ingest import upload_batch
from surelabel.server.pages import render
from surelabel.store import Session
from surelabel.store.export import export_rows
from surelabel.store.roles import ALL_TASKS, ROLES, SCOPES, TASK_ROLES

router = APIRouter(prefix="/admin", include_in_schema=False)
log = logging.getLogger("surelabel.server")
UPLOAD_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv",
                  ".parquet": "parquet", ".pq": "parquet"}
#: The export's media types, per format.
MEDIA = {"jsonl": "application/x-ndjson", "csv": "text/csv",
         "parquet": "application/vnd.apache.parquet"}


def _admin(request: Request, service: Service, csrf: str | None = None) -> Session:
    session = need_session(request, service.store)
    need_admin(session)
    if csrf is not None:
        check_csrf(session, csrf)
    return session


def _page(name: str, service: Service, session: Session, status: int = 200,
          **context: Any) -> Response:
    return render(name, status=status, session=session, user=session.user,
                  tasks=list(service.classifiers), **context)


@router.get("")
def admin_home() -> Response:
    return RedirectResponse("/admin/users", status_code=303)


# -- users ------------------------------------------------------------------------------


def _users_page(service: Service, session: Session, *, status: int = 200,
                notice: str | None = None, secret: dict[str, str] | None = None,
                error: str | None = None) -> Response:
    return _page("admin_users.html", service, session, status=status,
                 users=service.store.list_users(), roles=ROLES, task_roles=TASK_ROLES,
                 all_tasks=ALL_TASKS, notice=notice, secret=secret, error=error,
                 now=service.store.clock())


@router.get("/users")
def users_page(request: Request, service: ServiceDep) -> Response:
    return _users_page(service, _admin(request, service))


@router.post("/users")
def add_user(
    request: Request,
    service: ServiceDep,
    csrf: str = Form(""),
    name: str = Form(max_length=200),
    role: str = Form("reviewer"),
    tasks: Annotated[list[str] | None, Form()] = None,
    quota: str = Form("", max_length=10),
) -> Response:
    session = _admin(request, service, csrf)
    try:
        chosen = [t for t in tasks or [] if t in service.classifiers] or None
        password = service.store.add_user(name.strip(), role, tasks=chosen,
                                          quota=_quota(quota))
    except UserError as exc:
        return _users_page(service, session, status=422, error=str(exc))
    log.info("admin %s added user %s (%s)", session.user.name, name, role)
    return _users_page(service, session, notice=f"User {name} created.",
                       secret={"what": f"One-time password of {name}", "value": password})


def _quota(text: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"quota must be a whole number of at least 1, got {text!r}")
    return int(text)


@router.post("/users/{action}")
def user_action(
    request: Request,
    action: str,
    service: ServiceDep,
    csrf: str = Form(""),
    name: str = Form(max_length=200),
    task: str = Form("", max_length=200),
    role: str = Form("", max_length=20),
    quota: str = Form("", max_length=10),
) -> Response:
    """reset | disable | enable | unlock | grant | revoke | admin | member."""
    session = _admin(request, service, csrf)
    store = service.store
    secret = None
    try:
        if action == "reset":
            password = store.set_password(name)
            secret = {"what": f"New one-time password of {name}", "value": password}
        elif action in ("disable", "enable") and name == session.user.name:
            raise UserError("you cannot disable or enable your own account here")
        elif action == "disable":
            store.disable_user(name)
        elif action == "enable":
            store.enable_user(name)
        elif action == "unlock":
            store.unlock_user(name)
        elif action == "grant":
            if task != ALL_TASKS and task not in service.classifiers:
                raise UserError(f"no task {task!r}")
            store.grant(name, task, role or "reviewer", quota=_quota(quota))
        elif action == "revoke":
            store.revoke_grant(name, task)
        elif action in ("admin", "member"):
            if name == session.user.name:
                raise UserError("you cannot change your own role")
            store.set_role(name, "admin" if action == "admin" else "reviewer")
        else:
            raise HTTPException(404, f"no user action {action!r}")
    except SurelabelError as exc:
        return _users_page(service, session, status=422, error=str(exc))
    log.info("admin %s: %s %s %s", session.user.name, action, name, task)
    return _users_page(service, session, notice=f"{action}: {name} done.", secret=secret)


# -- tokens -----------------------------------------------------------------------------


def _tokens_page(service: Service, session: Session, *, status: int = 200,
                 secret: dict[str, str] | None = None, error: str | None = None) -> Response:
    return _page("admin_tokens.html", service, session, status=status,
                 tokens=service.store.list_tokens(), scopes=SCOPES, secret=secret,
                 error=error)


@router.get("/tokens")
def tokens_page(request: Request, service: ServiceDep) -> Response:
    return _tokens_page(service, _admin(request, service))


@router.post("/tokens")
def create_token(
    request: Request,
    service: ServiceDep,
    csrf: str = Form(""),
    name: str = Form(max_length=200),
    scopes: Annotated[list[str] | None, Form()] = None,
    task: str = Form("", max_length=200),
) -> Response:
    session = _admin(request, service, csrf)
    try:
        if task and task not in service.classifiers:
            raise UserError(f"no task {task!r}")
        token = service.store.create_token(name.strip(), scopes or [], task=task or None)
    except UserError as exc:
        return _tokens_page(service, session, status=422, error=str(exc))
    log.info("admin %s created token %s (%s, task %s)", session.user.name, name,
             " ".join(scopes or []), task or "all")
    return _tokens_page(service, session,
                        secret={"what": f"API token {name} (shown once)", "value": token})


@router.post("/tokens/revoke")
def revoke_token(request: Request, service: ServiceDep, csrf: str = Form(""),
                 token_id: int = Form(ge=1, le=2**63 - 1)) -> Response:
    session = _admin(request, service, csrf)
    try:
        service.store.revoke_token_id(token_id)
    except SurelabelError as exc:
        return _tokens_page(service, session, status=404, error=str(exc))
    log.info("admin %s revoked token %s", session.user.name, token_id)
    return RedirectResponse("/admin/tokens", status_code=303)


# -- upload -----------------------------------------------------------------------------


@router.get("/upload")
def upload_page(request: Request, service: ServiceDep) -> Response:
    session = _admin(request, service)
    return _page("admin_upload.html", service, session, jobs=service.jobs.recent(),
                 error=None, limit=service.settings.max_upload_bytes)


@router.post("/upload")
async def upload(
    request: Request,
    service: ServiceDep,
    file: Annotated[UploadFile, File()],
    csrf: str = Form(""),
    task: str = Form(max_length=200),
    text_field: str = Form("text", max_length=200),
) -> Response:
    session = _admin(request, service, csrf)
    classifier_for(service.classifiers, task)
    name = Path(file.filename or "upload").name
    suffix = Path(name).suffix.lower()
    if suffix not in UPLOAD_FORMATS:
        return _page("admin_upload.html", service, session, status=422,
                     jobs=service.jobs.recent(), limit=service.settings.max_upload_bytes,
                     error=f"{name}: upload a .jsonl, .csv or .parquet file")
    data = await file.read()
    with tempfile.TemporaryDirectory(prefix="surelabel-upload-") as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            rows = read_rows(path, text_field=text_field or "text")
            with_ids = _declares_ids(path, UPLOAD_FORMATS[suffix])
        except SurelabelError as exc:
            message = str(exc).replace(str(path), name)
            return _page("admin_upload.html", service, session, status=422,
                         jobs=service.jobs.recent(), limit=service.settings.max_upload_bytes,
                         error=message)
    job = service.jobs.start(task, rows, lambda chunk: upload_batch(service, task, chunk,
                                                                    with_ids),
                             filename=name, by=session.user.name)
    log.info("admin %s uploaded %s (%d rows) into %s: job %s", session.user.name, name,
             len(rows), task, job.id)
    return RedirectResponse(f"/admin/upload/{job.id}", status_code=303)


def _declares_ids(path: Path, fmt: str) -> bool:
    """Whether the file gives its rows ids (an ``id`` field or column): then they are the
    items' client ids, and uploading the file again stores nothing twice. Without one, the
    rows are items without an id (de-duplicated by text if the task asks)."""
    if fmt == "csv":
        with open(path, encoding="utf-8-sig", newline="") as fh:
            return "id" in (next(csv.reader(fh), None) or [])
    if fmt == "parquet":
        import pyarrow.parquet

        return "id" in pyarrow.parquet.read_schema(path).names
    with open(path, encoding="utf-8-sig") as fh:
        for line in fh:
            if line.strip():
                first = json.loads(line)
                return isinstance(first, dict) and first.get("id") not in (None, "")
    return False


@router.get("/upload/{job_id}")
def upload_progress(request: Request, job_id: int, service: ServiceDep) -> Response:
    session = _admin(request, service)
    job = service.jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no upload job {job_id}")
    return _page("admin_job.html", service, session, job=job)


# -- export -----------------------------------------------------------------------------


@router.get("/export")
def export_page(request: Request, service: ServiceDep) -> Response:
    session = _admin(request, service)
    return _page("admin_export.html", service, session, formats=OUTPUT_FORMATS,
                 counts={t: service.store.count_items(t) for t in service.classifiers})


@router.get("/export/download")
def export_download(request: Request, service: ServiceDep, task: str,
                    which: str = "all", format: str = "jsonl") -> Response:
    session = _admin(request, service)
    classifier_for(service.classifiers, task)
    if format not in OUTPUT_FORMATS or which not in ("all", "reviewed"):
        raise HTTPException(422, "which: all or reviewed; format: "
                                 f"{', '.join(OUTPUT_FORMATS)}")
    fd, tmp = tempfile.mkstemp(prefix="surelabel-export-", suffix=f".{format}")
    os.close(fd)
    try:
        n = write_export(service, task, which == "reviewed", tmp, format)
    except BaseException:
        os.unlink(tmp)
        raise
    log.info("admin %s exported %d %s items of %s as %s", session.user.name, n, which, task,
             format)
    filename = f"{task}-{which}.{format}"
    return FileResponse(tmp, media_type=MEDIA[format], filename=filename,
                        background=BackgroundTask(os.unlink, tmp))


def write_export(service: Service, task: str, reviewed: bool, path: str, fmt: str) -> int:
    with open_writer(path, fmt) as writer:
        return writer.write_all(export_rows(service.store, task, reviewed=reviewed))


# -- calibration versions ---------------------------------------------------------------


@router.post("/calibrations/{action}")
def calibration_action(
    request: Request,
    action: str,
    service: ServiceDep,
    csrf: str = Form(""),
    task: str = Form(max_length=200),
    version: str = Form("", max_length=20),
) -> Response:
    """refit | rollback | activate (a version) | none, from the stats page."""
    session = _admin(request, service, csrf)
    classifier_for(service.classifiers, task)
    store = service.store
    actor = session.user.name
    try:
        if action == "refit":
            result = service.calibrations.refit(task, actor=actor)
            message = result.message
        elif action == "rollback":
            now = store.rollback_calibration(task, actor=actor)
            message = f"rolled back: version {now} is active" if now else \
                "rolled back: no calibration is applied"
        elif action == "activate" and version.isdigit():
            store.activate_calibration(task, int(version), actor=actor)
            message = f"version {version} is active"
        elif action == "none":
            store.activate_calibration(task, None, actor=actor, action="deactivate")
            message = "no calibration is applied"
        else:
            raise HTTPException(404, f"no calibration action {action!r}")
    except (CalibrationError, SurelabelError) as exc:
        return render("message.html", status=409, session=session, user=session.user,
                      title="Calibration", message=str(exc),
                      back=f"/stats?task={quote(task)}")
    log.info("admin %s: calibration %s on %s: %s", actor, action, task, message)
    return RedirectResponse(f"/stats?task={quote(task)}", status_code=303)
