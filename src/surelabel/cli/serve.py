"""``surelabel serve``: the HTTP API and the review queue for one or more tasks."""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any

from surelabel.backends.registry import build_backend
from surelabel.cli.common import (
    add_backend_args,
    add_db_arg,
    backend_spec_from,
    method_options_from,
)
from surelabel.errors import UserError
from surelabel.task import load_task


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the classification API and the review queue",
        description="Serve POST /v1/tasks/TASK/classify and the review pages (/review). "
                    "Create reviewers with `surelabel users add` and API tokens with "
                    "`surelabel tokens create`. Each task file's `review:` section sets "
                    "answers per item, the audit share, refits and de-duplication "
                    "(docs/SERVICE.md).",
    )
    p.add_argument("tasks", nargs="+", metavar="TASK", help="task file(s) (YAML or JSON)")
    add_db_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--method", default="auto", help="confidence method (default: auto)")
    p.add_argument("--no-reason", action="store_true", help="skip generating reasons")
    p.add_argument("--calibration", action="append", default=[], metavar="FILE",
                   help="calibration file from `surelabel calibrate` (one per task; repeatable)")
    p.add_argument("--batch-limit", type=int, default=32, metavar="N",
                   help="most items per classify request (default: 32)")
    p.add_argument("--queue-size", type=int, default=64, metavar="N",
                   help="most items waiting for the model before 503 (default: 64)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="classification threads (default: 1; the embedded model runs one "
                        "evaluation at a time)")
    p.add_argument("--max-body", type=int, default=1_000_000, metavar="BYTES",
                   help="largest request body (default: 1000000)")
    p.add_argument("--lease", type=float, default=300.0, metavar="SECONDS",
                   help="how long a reviewer holds an opened item (default: 300)")
    p.add_argument("--secure-cookies", action="store_true",
                   help="mark cookies Secure (when served over HTTPS)")
    p.add_argument("--public-origin", action="append", default=[], metavar="URL",
                   help="an origin the pages are reached under besides the Host header's, "
                        "e.g. https://review.example.org behind a proxy; form posts from any "
                        "other origin are refused (repeatable)")
    p.add_argument("--forwarded-allow-ips", default=None, metavar="IPS",
                   help="trust X-Forwarded-For/-Proto from these proxy addresses (uvicorn's "
                        "option; login throttling then sees the real client address)")
    p.add_argument("--undo-seconds", type=float, default=120.0, metavar="SECONDS",
                   help="how long reviewers may take back their last answer (default: 120)")
    p.add_argument("--max-upload", type=int, default=50_000_000, metavar="BYTES",
                   help="largest file on the admin upload page (default: 50000000)")
    p.add_argument("--no-docs", action="store_true", help="do not serve the API docs at /docs")
    login = p.add_argument_group("login throttling")
    login.add_argument("--login-window", type=float, default=300.0, metavar="SECONDS",
                       help="window of the failure counts below (default: 300)")
    login.add_argument("--login-failures", type=int, default=5, metavar="N",
                       help="failed logins per account within the window before 429 "
                            "(default: 5)")
    login.add_argument("--login-failures-per-address", type=int, default=20, metavar="N",
                       help="failed logins per client address within the window (default: 20)")
    login.add_argument("--lockout-after", type=int, default=10, metavar="N",
                       help="failed logins in a row that lock an account (default: 10)")
    login.add_argument("--lockout-seconds", type=float, default=900.0, metavar="SECONDS",
                       help="how long a locked account stays locked (default: 900)")
    p.add_argument("--log-level", default="info",
                   choices=("critical", "error", "warning", "info", "debug"))
    p.add_argument("--log-format", default="text", choices=("text", "json"),
                   help="service logs as text or as JSON lines; the access log (logger "
                        "surelabel.access) is one JSON object per request either way")
    p.add_argument("--no-access-log", action="store_true", help="no access log")
    add_backend_args(p)
    p.set_defaults(func=run)


def _calibrations(paths: list[str], tasks: dict[str, Any], model: str) -> dict[str, Any]:
    if not paths:
        return {}
    from surelabel.calibration.file import load

    out: dict[str, Any] = {}
    for path in paths:
        calibration = load(path)
        task = tasks.get(calibration.task_name)
        if task is None:
            raise UserError(f"calibration file {path} is for task {calibration.task_name!r}, "
                            f"which is not served here")
        calibration.check(task, model, source=f"calibration file {path}")
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
        out[task.name] = (calibration, f"{calibration.method}-{digest}")
    return out


def _logging(level: str, fmt: str) -> None:
    """surelabel's loggers to stderr (uvicorn configures its own)."""
    import logging

    from surelabel.server.metrics import JsonLineFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("surelabel")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from surelabel.server import Settings, create_app
    from surelabel.store import LoginLimits, Store

    for name in ("login_failures", "login_failures_per_address", "lockout_after"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')}: must be at least 1")
    tasks = [load_task(path) for path in args.tasks]
    store = Store(args.db)
    spec = backend_spec_from(args)
    if spec.name == "llamacpp" and "n_threads" not in spec.options:
        # The server's event loop shares the cores with llama.cpp's spinning threads.
        from surelabel.backends.llamacpp import shared_threads

        spec = spec.with_options(n_threads=shared_threads())
    backend = build_backend(spec)
    settings = Settings(
        batch_limit=args.batch_limit,
        max_pending=max(args.queue_size, args.batch_limit),
        workers=args.workers,
        max_body_bytes=args.max_body,
        lease_seconds=args.lease,
        secure_cookies=args.secure_cookies,
        method=args.method,
        reason=False if args.no_reason else None,
        method_options=method_options_from(args),
        calibrations=_calibrations(args.calibration, {t.name: t for t in tasks},
                                   backend.model_name),
        login=LoginLimits(window=args.login_window, per_account=args.login_failures,
                          per_address=args.login_failures_per_address,
                          lockout_after=args.lockout_after,
                          lockout_seconds=args.lockout_seconds),
        undo_seconds=args.undo_seconds,
        max_upload_bytes=args.max_upload,
        docs=not args.no_docs,
        public_origins=tuple(args.public_origin),
        access_log=not args.no_access_log,
    )
    _logging(args.log_level, args.log_format)
    app = create_app(tasks, backend, store, settings=settings)
    where = f"http://{args.host}:{args.port}"
    docs = "" if args.no_docs else f", API docs: {where}/docs"
    print(f"surelabel: serving {', '.join(t.name for t in tasks)} at {where} "
          f"(review: {where}/review, health: {where}/health{docs})", file=sys.stderr)
    if not store.list_users():
        print("surelabel: no reviewers yet: `surelabel users add NAME --db ...`",
              file=sys.stderr)
    extra: dict[str, Any] = {}
    if args.forwarded_allow_ips:
        extra = {"proxy_headers": True, "forwarded_allow_ips": args.forwarded_allow_ips}
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                    access_log=False, **extra)
    finally:
        store.close()
    return 0
