"""``surelabel calibrations``: a task's calibration versions in the review store.

``surelabel serve`` stores one version per refit from reviews (and per calibration file
it is given) and applies the active one to new items; these commands list the versions,
roll back, activate one, or write one out as a calibration file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

from surelabel.cli.common import add_db_arg


def register(sub: Any) -> None:
    p = sub.add_parser("calibrations", help="list, roll back or activate calibration versions",
                       description="Calibration versions of a task in the review store "
                                   "(made by `surelabel serve` from reviews, or from files).")
    cmds = p.add_subparsers(dest="calibrations_command", required=True)
    ls = cmds.add_parser("list", help="every version, newest first (* marks the active one)")
    ls.add_argument("task")
    add_db_arg(ls)
    ls.set_defaults(func=run_list)
    rb = cmds.add_parser("rollback", help="activate the version before the active one")
    rb.add_argument("task")
    add_db_arg(rb)
    rb.set_defaults(func=run_rollback)
    act = cmds.add_parser("activate", help="make a version the active one ('none': no "
                                           "calibration)")
    act.add_argument("task")
    act.add_argument("version", help="a version number, or none")
    add_db_arg(act)
    act.set_defaults(func=run_activate)
    show = cmds.add_parser("export", help="write a version as a calibration file")
    show.add_argument("task")
    show.add_argument("version", type=int)
    show.add_argument("-o", "--output", required=True, metavar="FILE")
    add_db_arg(show)
    show.set_defaults(func=run_export)


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def run_list(args: argparse.Namespace) -> int:
    from surelabel.store import Store

    with Store(args.db) as store:
        active = store.active_calibration_id(args.task)
        versions = store.list_calibrations(args.task)
    if not versions:
        print(f"task {args.task}: no calibration versions")
        return 0
    print("version\tmade\tsource\tmethod\trows\theld-out ECE\tuncalibrated ECE\taccept above")
    for v in reversed(versions):
        mark = "*" if v.id == active else " "
        print(f"{mark}{v.id}\t{_when(v.created_at)}\t{v.source}\t{v.method}\t{v.n_fitted}\t"
              f"{_num(v.heldout_ece)}\t{_num(v.raw_ece)}\t{_num(v.accept_threshold)}")
    if active is None:
        print("(no version is active: new items get no calibration)")
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    from surelabel.store import Store

    with Store(args.db) as store:
        now = store.rollback_calibration(args.task, actor="surelabel calibrations rollback")
    print(f"task {args.task}: " + (f"version {now} is active" if now is not None
                                   else "no calibration is active"))
    return 0


def run_activate(args: argparse.Namespace) -> int:
    from surelabel.errors import UserError
    from surelabel.store import Store

    if args.version != "none" and not args.version.isdigit():
        raise UserError(f"version: expected a number or none, got {args.version!r}")
    version = None if args.version == "none" else int(args.version)
    with Store(args.db) as store:
        store.activate_calibration(args.task, version, actor="surelabel calibrations activate",
                                   action="activate" if version else "deactivate")
    print(f"task {args.task}: " + (f"version {version} is active" if version is not None
                                   else "no calibration is active"))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from surelabel.store import Store

    with Store(args.db) as store:
        data = store.get_calibration(args.task, args.version).data
    Path(args.output).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n",
                                 encoding="utf-8")
    print(f"wrote version {args.version} of task {args.task} to {args.output}")
    return 0
