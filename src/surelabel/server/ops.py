"""Operations endpoints: ``/health``, ``/metrics`` (Prometheus text format) and ``/docs``.

``/docs`` is Swagger UI from the installed ``swagger-ui-bundle`` package, served by this
service under the same strict Content-Security-Policy as every page (its start-up code is
``static/docs.js``, not an inline script): no CDN, nothing third-party at run time.
"""

# No ``from __future__ import annotations``: FastAPI reads the annotations at runtime.

import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, Response

from surelabel.server.auth import CanScrape
from surelabel.server.context import Service, ServiceDep
from surelabel.server.errors import SafeJSONResponse

router = APIRouter(include_in_schema=False)
SWAGGER_FILES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
                 "favicon-32x32.png": "image/png"}


def health_report(service: Service) -> tuple[int, dict[str, Any]]:
    """The health document and its status code (200 healthy, 503 not)."""
    t0 = time.perf_counter()
    try:
        service.store.ping()
        database: dict[str, Any] = {"ok": True, "ms": round(1000 * (time.perf_counter() - t0), 2)}
    except Exception as exc:
        database = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    pool = service.pool
    queue = {"depth": pool.pending, "limit": pool.max_pending, "workers": pool.workers,
             "workers_alive": pool.alive}
    model = {"loaded": service.backend is not None, "name": service.backend.model_name}
    tasks = {}
    for name in service.classifiers:
        problem = service.calibrations.problems.get(name)
        tasks[name] = {"calibration_problem": problem}
    ok = database["ok"] and pool.alive and model["loaded"]
    degraded = any(t["calibration_problem"] for t in tasks.values())
    status = "fail" if not ok else ("degraded" if degraded else "ok")
    return (200 if ok else 503), {"status": status, "database": database, "model": model,
                                  "queue": queue, "tasks": tasks}


@router.get("/health")
def health(service: ServiceDep) -> Response:
    """Is the database reachable, the model loaded, the queue moving? 200 or 503."""
    code, body = health_report(service)
    return SafeJSONResponse(body, status_code=code, headers={"Cache-Control": "no-store"})


@router.get("/metrics")
def metrics(_: CanScrape, service: ServiceDep) -> Response:
    """Prometheus metrics (a token with the ``metrics`` scope)."""
    return Response(service.metrics.render(),
                    media_type="text/plain; version=0.0.4; charset=utf-8")


def store_figures(service: Service) -> dict[str, Any]:
    """What the metrics read from the store at scrape time."""
    tasks: dict[str, Any] = {}
    answers = service.store.answers_per_task()
    for name in service.classifiers:
        tasks[name] = {"counts": service.store.count_items(name),
                       "answers": answers.get(name, 0),
                       "calibration": service.store.active_calibration_id(name)}
    return {"queue_depth": service.pool.pending, "queue_limit": service.pool.max_pending,
            "tasks": tasks}


def swagger_dir() -> Path | None:
    try:
        import swagger_ui_bundle
    except ImportError:
        return None
    return Path(swagger_ui_bundle.swagger_ui_path)


DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>surelabel API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/static/favicon-32x32.png">
</head><body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/static/docs.js"></script>
</body></html>
"""


@router.get("/docs")
def docs(service: ServiceDep) -> Response:
    if not service.settings.docs:
        raise HTTPException(404, "API docs are off (surelabel serve --no-docs)")
    if swagger_dir() is None:
        raise HTTPException(404, "API docs need the swagger-ui-bundle package "
                                 "(pip install 'surelabel[server]'); the schema is at "
                                 "/openapi.json")
    return HTMLResponse(DOCS_PAGE)


@router.get("/docs/static/{name}")
def docs_static(name: str, service: ServiceDep) -> Response:
    folder = swagger_dir()
    if name not in SWAGGER_FILES or folder is None or not service.settings.docs:
        raise HTTPException(404)
    return FileResponse(folder / name, media_type=SWAGGER_FILES[name],
                        headers={"Cache-Control": "public, max-age=86400"})
