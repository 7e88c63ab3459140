"""``surelabel export``: stored items as JSONL; ``--reviewed`` gives labelled rows for
``surelabel calibrate`` and ``surelabel evaluate``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from surelabel.cli.common import add_db_arg

if TYPE_CHECKING:
    from surelabel.store import Item


def register(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="export stored items (--reviewed: the reviewers' labels, for calibrate)",
        description="Write the stored items of a task as JSONL. With --reviewed, one "
                    '{"text", "label", ...} row per item a reviewer labelled (accepted or '
                    "corrected; items sent for clarification have no label and are left out).",
    )
    p.add_argument("task", help="task name (or the task file, whose name is used)")
    p.add_argument("--reviewed", action="store_true", help="only reviewed items, as labels")
    p.add_argument("-o", "--output", metavar="FILE", help="output file (default: stdout)")
    add_db_arg(p)
    p.set_defaults(func=run)


def _when(t: float | None) -> str | None:
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")


def reviewed_row(item: Item) -> dict[str, Any]:
    """A labelled row: the reviewer's label, with the model's answer kept for comparison."""
    return {
        "id": item.client_id if item.client_id is not None else item.id,
        "text": item.text,
        "label": item.review_label,
        "model_label": item.predicted,
        "confidence": item.confidence,
        "decision": item.decision,
        "review_action": item.review_action,
        "reviewer": item.reviewer,
        "reviewed_at": _when(item.reviewed_at),
        "note": item.review_note,
    }


def _task_name(arg: str) -> str:
    path = Path(arg)
    if path.suffix.lower() in (".yaml", ".yml", ".json") and path.is_file():
        from surelabel.task import load_task

        return load_task(path).name
    return arg


def run(args: argparse.Namespace) -> int:
    from surelabel.store import Store

    task = _task_name(args.task)
    out: TextIO = sys.stdout if args.output in (None, "-") else open(  # noqa: SIM115
        args.output, "w", encoding="utf-8"
    )
    n = 0
    try:
        with Store(args.db) as store:
            if args.reviewed:
                rows = (reviewed_row(i) for i in store.reviewed(task)
                        if i.review_action != "clarify")
            else:
                rows = (i.to_dict() for i in store.all_items(task))
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
    finally:
        if out is not sys.stdout:
            out.close()
    if args.output not in (None, "-"):
        print(f"surelabel: wrote {n} rows to {args.output}", file=sys.stderr)
    return 0
