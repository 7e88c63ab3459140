"""``surelabel tokens``: API tokens for the HTTP API (stored hashed, shown once)."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from surelabel.cli.common import add_db_arg
from surelabel.store.roles import SCOPES  # imports no SQLAlchemy: building the parser stays light


def register(sub: Any) -> None:
    p = sub.add_parser("tokens", help="manage API tokens",
                       description="API tokens authenticate programs calling the HTTP API "
                                   "(Authorization: Bearer TOKEN).")
    cmds = p.add_subparsers(dest="tokens_command", required=True)
    create = cmds.add_parser("create", help="create a token and print it (shown once)")
    create.add_argument("name", help="who uses it, e.g. ingest-bot")
    create.add_argument("--scope", action="append", choices=SCOPES, metavar="SCOPE",
                        help=f"{', '.join(SCOPES)}; repeatable (default: classify and read)")
    create.add_argument("--task", metavar="TASK",
                        help="limit the token to one task (default: every task)")
    add_db_arg(create)
    create.set_defaults(func=run_create)
    revoke = cmds.add_parser("revoke", help="revoke every token of a name")
    revoke.add_argument("name")
    add_db_arg(revoke)
    revoke.set_defaults(func=run_revoke)
    ls = cmds.add_parser("list", help="list tokens (names and scopes; never the secrets)")
    add_db_arg(ls)
    ls.set_defaults(func=run_list)


def run_create(args: argparse.Namespace) -> int:
    from surelabel.store import Store

    scopes = args.scope or ["classify", "read"]
    with Store(args.db) as store:
        token = store.create_token(args.name, scopes, task=args.task)
    print(token)
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    from surelabel.store import NotFoundError, Store

    with Store(args.db) as store:
        n = store.revoke_tokens(args.name)
    if n == 0:
        raise NotFoundError(f"no active token named {args.name!r}")
    print(f"revoked {n} token(s) of {args.name}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from surelabel.store import Store

    with Store(args.db) as store:
        for token in store.list_tokens():
            created = dt.datetime.fromtimestamp(token.created_at, dt.timezone.utc)
            state = "revoked" if token.revoked_at is not None else "active"
            print(f"{token.name}\t{' '.join(token.scopes)}\t{state}\t"
                  f"{created:%Y-%m-%d %H:%M} UTC\t{token.task or '*'}")
    return 0
