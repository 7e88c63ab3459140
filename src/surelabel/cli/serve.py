"""``surelabel serve``: the HTTP API and the review queue for one or more tasks."""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any

from surelabel.cli.common import add_backend_args, add_db_arg, backend_from, method_options_from
from surelabel.errors import UserError
from surelabel.task import load_task


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the classification API and the review queue",
        description="Serve POST /v1/tasks/TASK/classify and the review pages (/review). "
                    "Create reviewers with `surelabel users add` and API tokens with "
                    "`surelabel tokens create`.",
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
    p.add_argument("--log-level", default="info",
                   choices=("critical", "error", "warning", "info", "debug"))
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


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from surelabel.server import Settings, create_app
    from surelabel.store import Store

    tasks = [load_task(path) for path in args.tasks]
    store = Store(args.db)
    backend = backend_from(args)
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
    )
    app = create_app(tasks, backend, store, settings=settings)
    where = f"http://{args.host}:{args.port}"
    print(f"surelabel: serving {', '.join(t.name for t in tasks)} at {where} "
          f"(review: {where}/review, API docs: {where}/docs)", file=sys.stderr)
    if not store.list_users():
        print("surelabel: no reviewers yet: `surelabel users add NAME --db ...`",
              file=sys.stderr)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        store.close()
    return 0
