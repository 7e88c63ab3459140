"""``surelabel users``: accounts for the review pages, and their roles per task."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from surelabel.cli.common import add_db_arg

# imports no SQLAlchemy: building the parser stays light
from surelabel.store.roles import ALL_TASKS, ROLES, TASK_ROLES


def register(sub: Any) -> None:
    p = sub.add_parser("users", help="manage reviewer accounts and their task roles",
                       description="Manage the people who log in to the review pages. An "
                                   "admin may do everything; a reviewer or adjudicator works "
                                   "on the tasks it holds a role for. Resetting a password, "
                                   "changing a role and disabling an account end its "
                                   "sessions at once.")
    cmds = p.add_subparsers(dest="users_command", required=True)
    add = cmds.add_parser("add", help="add a user and print a one-time password")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, default="reviewer",
                     help="reviewer, adjudicator (also settles disagreements) or admin")
    add.add_argument("--task", action="append", metavar="TASK",
                     help="a task the role is for; repeatable (default: every task)")
    add.add_argument("--quota", type=int, metavar="N", help="most answers per 24 hours")
    add_db_arg(add)
    add.set_defaults(func=run_add)
    pw = cmds.add_parser("reset-password", help="give a user a new one-time password")
    pw.add_argument("name")
    add_db_arg(pw)
    pw.set_defaults(func=run_reset)
    grant = cmds.add_parser("grant", help="give a user a role for a task ('*': every task)")
    grant.add_argument("name")
    grant.add_argument("task")
    grant.add_argument("--role", choices=TASK_ROLES, default="reviewer")
    grant.add_argument("--quota", type=int, metavar="N", help="most answers per 24 hours")
    add_db_arg(grant)
    grant.set_defaults(func=run_grant)
    revoke = cmds.add_parser("revoke", help="take a user's role for a task away")
    revoke.add_argument("name")
    revoke.add_argument("task")
    add_db_arg(revoke)
    revoke.set_defaults(func=run_revoke)
    for verb, what in (("disable", "disable an account (its sessions end)"),
                       ("enable", "enable a disabled account"),
                       ("unlock", "lift a lockout after failed logins")):
        c = cmds.add_parser(verb, help=what)
        c.add_argument("name")
        add_db_arg(c)
        c.set_defaults(func=run_state, verb=verb)
    ls = cmds.add_parser("list", help="list users")
    add_db_arg(ls)
    ls.set_defaults(func=run_list)


def run_add(args: argparse.Namespace) -> int:
    from surelabel.store import Store

    with Store(args.db) as store:
        password = store.add_user(args.name, args.role, tasks=args.task, quota=args.quota)
    where = "" if args.role == "admin" else f" for {', '.join(args.task or ['every task'])}"
    print(f"user {args.name} ({args.role}{where}) created; one-time password (shown once; "
          f"the first login asks for a new one): {password}")
    return 0


def run_reset(args: argparse.Namespace) -> int:
    from surelabel.store import Store

    with Store(args.db) as store:
        password = store.set_password(args.name)
    print(f"new one-time password for {args.name} (shown once; their sessions ended): "
          f"{password}")
    return 0


def run_grant(args: argparse.Namespace) -> int:
    from surelabel.store import Store

    with Store(args.db) as store:
        store.grant(args.name, args.task, args.role, quota=args.quota)
    task = "every task" if args.task == ALL_TASKS else f"task {args.task}"
    print(f"{args.name} is {args.role} of {task}")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    from surelabel.store import Store

    with Store(args.db) as store:
        store.revoke_grant(args.name, args.task)
    print(f"{args.name} holds no role for {args.task} any more")
    return 0


def run_state(args: argparse.Namespace) -> int:
    from surelabel.store import Store

    with Store(args.db) as store:
        {"disable": store.disable_user, "enable": store.enable_user,
         "unlock": store.unlock_user}[args.verb](args.name)
    print(f"{args.name}: {args.verb}d")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from surelabel.store import Store

    with Store(args.db) as store:
        users = store.list_users()
        now = store.clock()
    for user in users:
        created = dt.datetime.fromtimestamp(user.created_at, dt.timezone.utc)
        if user.is_admin:
            roles = "every task"
        else:
            roles = ", ".join(
                f"{'*' if t == ALL_TASKS else t}:{r.role}" + (f"/{r.quota}" if r.quota else "")
                for t, r in user.tasks.items()) or "no task"
        state = ("disabled" if user.disabled else
                 "locked" if user.locked_until and user.locked_until > now else
                 "one-time password" if user.must_change_password else "active")
        print(f"{user.name}\t{user.role}\t{roles}\t{state}\t{created:%Y-%m-%d %H:%M} UTC")
    return 0
