"""``surelabel users``: reviewer accounts for the review pages."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from surelabel.cli.common import add_db_arg
from surelabel.store.roles import ROLES  # imports no SQLAlchemy: building the parser stays light


def register(sub: Any) -> None:
    p = sub.add_parser("users", help="manage reviewer accounts",
                       description="Manage the people who log in to the review pages.")
    cmds = p.add_subparsers(dest="users_command", required=True)
    add = cmds.add_parser("add", help="add a user and print a one-time password")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, default="reviewer")
    add_db_arg(add)
    add.set_defaults(func=run_add)
    pw = cmds.add_parser("reset-password", help="give a user a new one-time password")
    pw.add_argument("name")
    add_db_arg(pw)
    pw.set_defaults(func=run_reset)
    ls = cmds.add_parser("list", help="list users")
    add_db_arg(ls)
    ls.set_defaults(func=run_list)


def run_add(args: argparse.Namespace) -> int:
    from surelabel.store import Store

    with Store(args.db) as store:
        password = store.add_user(args.name, args.role)
    print(f"user {args.name} ({args.role}) created; password (shown once): {password}")
    return 0


def run_reset(args: argparse.Namespace) -> int:
    from surelabel.store import Store

    with Store(args.db) as store:
        password = store.set_password(args.name)
    print(f"new password for {args.name} (shown once): {password}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from surelabel.store import Store

    with Store(args.db) as store:
        for user in store.list_users():
            created = dt.datetime.fromtimestamp(user.created_at, dt.timezone.utc)
            print(f"{user.name}\t{user.role}\t{created:%Y-%m-%d %H:%M} UTC")
    return 0
