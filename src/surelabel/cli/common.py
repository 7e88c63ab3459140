"""Options shared by several sub-commands."""

from __future__ import annotations

import argparse
from typing import Any

from surelabel.backends import BACKENDS, Backend, make_backend
from surelabel.task import Task, Thresholds, load_task


def add_task_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", help="task file (YAML or JSON)")


def add_backend_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--backend", choices=BACKENDS, default="llamacpp",
                       help="where the model runs (default: llamacpp, the embedded model)")
    group.add_argument("--model", metavar="PATH",
                       help="GGUF file for llamacpp (default: embedded SmolLM2-135M-Instruct)")
    group.add_argument("--n-ctx", type=int, default=2048, metavar="N",
                       help="context window in tokens (default: 2048)")
    group.add_argument("--threads", type=int, default=None, metavar="N",
                       help="CPU threads (default: all cores)")


def add_threshold_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--accept", type=float, metavar="P",
                        help="accept when confidence > P (default: the task's, else 0.9)")
    parser.add_argument("--clarify", type=float, metavar="P",
                        help="ask for clarification when confidence < P (default: 0.5)")


def thresholds_from(args: argparse.Namespace, task: Task) -> Thresholds:
    return Thresholds(
        accept=task.thresholds.accept if args.accept is None else args.accept,
        clarify=task.thresholds.clarify if args.clarify is None else args.clarify,
    )


def task_from(args: argparse.Namespace) -> Task:
    return load_task(args.task)


def backend_from(args: argparse.Namespace) -> Backend:
    options: dict[str, Any] = {}
    if args.backend == "llamacpp":
        options = {"model": args.model, "n_ctx": args.n_ctx, "n_threads": args.threads}
    return make_backend(args.backend, **options)
