"""``surelabel export``: stored items as JSONL, CSV or Parquet; ``--reviewed`` gives
labelled rows for ``surelabel calibrate`` and ``surelabel evaluate``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from surelabel.cli.common import add_db_arg
from surelabel.errors import UserError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="export stored items (--reviewed: the settled labels, for calibrate)",
        description="Write the stored items of a task. With --reviewed, one "
                    '{"text", "label", ...} row per settled item (agreed by its reviewers or '
                    "decided by an adjudicator; items sent for clarification have no label "
                    "and are left out). The format comes from the output's extension "
                    "(.jsonl, .csv, .parquet) or --format; stdout gets JSONL.",
    )
    p.add_argument("task", help="task name (or the task file, whose name is used)")
    p.add_argument("--reviewed", action="store_true", help="only settled items, as labels")
    p.add_argument("-o", "--output", metavar="FILE", help="output file (default: stdout)")
    p.add_argument("--format", choices=("jsonl", "csv", "parquet"),
                   help="output format (default: from the extension of --output)")
    add_db_arg(p)
    p.set_defaults(func=run)


def _task_name(arg: str) -> str:
    path = Path(arg)
    if path.suffix.lower() in (".yaml", ".yml", ".json") and path.is_file():
        from surelabel.task import load_task

        return load_task(path).name
    return arg


def run(args: argparse.Namespace) -> int:
    from surelabel.io import open_writer, output_format
    from surelabel.store import Store
    from surelabel.store.export import export_rows

    task = _task_name(args.task)
    target = None if args.output in (None, "-") else args.output
    fmt = output_format(target, args.format)  # refuses an unknown extension before any work
    if fmt == "parquet" and target is None:
        raise UserError("Parquet is written to a file: give -o FILE.parquet")
    with Store(args.db) as store, open_writer(target, fmt) as writer:
        n = writer.write_all(export_rows(store, task, reviewed=args.reviewed))
    if target is not None:
        print(f"surelabel: wrote {n} rows to {target} ({fmt})", file=sys.stderr)
    return 0
