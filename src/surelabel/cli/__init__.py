"""The ``surelabel`` command line. Each sub-command lives in its own module here."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from surelabel.errors import SurelabelError

# Modules under surelabel.cli that define `register(subparsers)`.
COMMANDS = ("classify", "serve", "users", "tokens", "export", "evaluate", "calibrate")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="surelabel",
        description="Classify text with a language model and say how sure it is.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"surelabel.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except SurelabelError as exc:
        print(f"surelabel: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("surelabel: interrupted", file=sys.stderr)
        return 130
    return code


def entry() -> None:
    sys.exit(main())
