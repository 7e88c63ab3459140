"""The ``surelabel`` command line. Each sub-command lives in its own module here."""

from __future__ import annotations

import argparse
import importlib
import os
import select
import sys
from collections.abc import Sequence
from typing import NoReturn

from surelabel.errors import SurelabelError

# Modules under surelabel.cli that define `register(subparsers)`.
COMMANDS = ("classify", "serve", "users", "tokens", "export", "evaluate", "calibrate",
            "calibrations")


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
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # a pipe other than our stdout: a real failure, with its traceback
        # The reader of our output went away (`surelabel classify ... | head -1`): stop
        # quietly, as a Unix tool killed by SIGPIPE does (exit 128 + 13).
        _silence_stdout()
        return 141
    return code


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reading end is closed."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return True
    if not hasattr(select, "poll"):
        return True
    poller = select.poll()
    poller.register(fd, 0)  # POLLERR and POLLHUP are always reported
    return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so flushing it at exit raises nothing more."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass


def entry() -> None:
    sys.exit(main())
