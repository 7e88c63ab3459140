"""Options shared by several sub-commands."""

from __future__ import annotations

import argparse
import os
from typing import Any

from surelabel.backends import BACKENDS, Backend, make_backend
from surelabel.backends.base import SAMPLES, SAMPLING_TEMPERATURE
from surelabel.errors import UserError
from surelabel.task import Task, Thresholds, load_task


def add_task_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", help="task file (YAML or JSON)")


def add_backend_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--backend", choices=BACKENDS, default="llamacpp",
                       help="where the model runs (default: llamacpp, the embedded model)")
    group.add_argument("--model", metavar="PATH",
                       help="GGUF file for llamacpp (default: embedded SmolLM2-135M-Instruct); "
                            "model name for openai (default: the first the server lists)")
    group.add_argument("--n-ctx", type=int, default=2048, metavar="N",
                       help="context window in tokens (default: 2048)")
    group.add_argument("--threads", type=int, default=None, metavar="N",
                       help="CPU threads (default: half the cores, at least 1)")
    api = parser.add_argument_group("OpenAI-compatible API (--backend openai)")
    api.add_argument("--base-url", metavar="URL",
                     help="API base URL, e.g. http://127.0.0.1:8080/v1 (default: OpenAI)")
    api.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), metavar="KEY",
                     help="API key (default: $OPENAI_API_KEY)")
    api.add_argument("--header", action="append", default=[], metavar="NAME:VALUE",
                     help="extra HTTP header, repeatable (Azure api-key, proxies)")
    api.add_argument("--concurrency", type=int, default=8, metavar="N",
                     help="requests in flight at most (default: 8)")
    api.add_argument("--max-rpm", type=int, metavar="N", help="cap on requests per minute")
    api.add_argument("--max-tpm", type=int, metavar="N", help="cap on tokens per minute")
    api.add_argument("--top-logprobs", type=int, default=20, metavar="K",
                     help="alternatives per token to request (default: 20, OpenAI's maximum; "
                          "0: the server gives no logprobs, use sampling)")
    api.add_argument("--timeout", type=float, default=60.0, metavar="S",
                     help="seconds before a request is abandoned and retried (default: 60)")
    api.add_argument("--samples", type=int, default=SAMPLES, metavar="N",
                     help=f"answers drawn per item by --method sampling (default: {SAMPLES})")
    api.add_argument("--sampling-temperature", type=float, default=SAMPLING_TEMPERATURE,
                     metavar="T", help="temperature of --method sampling "
                                       f"(default: {SAMPLING_TEMPERATURE})")
    api.add_argument("--no-cache", action="store_true",
                     help="do not read or write the response cache ($SURELABEL_CACHE_DIR)")


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
    elif args.backend == "openai":
        options = _openai_options(args)
    return make_backend(args.backend, **options)


def _openai_options(args: argparse.Namespace) -> dict[str, Any]:
    from surelabel.cache import ResponseCache

    headers = {}
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise UserError(f"--header {item!r}: expected NAME:VALUE")
        headers[name.strip()] = value.strip()
    return {
        "model": args.model,
        "base_url": args.base_url,
        "api_key": args.api_key,
        "headers": headers,
        "concurrency": args.concurrency,
        "max_rpm": args.max_rpm,
        "max_tpm": args.max_tpm,
        "top_logprobs": args.top_logprobs,
        "timeout": args.timeout,
        "samples": args.samples,
        "sampling_temperature": args.sampling_temperature,
        "cache": None if args.no_cache else ResponseCache(),
    }


DEFAULT_DB = "sqlite:///surelabel.db"


def add_db_arg(parser: argparse.ArgumentParser) -> None:
    """``--db``: the review store (serve, users, tokens, export)."""
    parser.add_argument(
        "--db", default=os.environ.get("SURELABEL_DB", DEFAULT_DB), metavar="URL",
        help="database URL: sqlite:///FILE or postgresql://USER:PW@HOST/DB "
             f"(default: $SURELABEL_DB, else {DEFAULT_DB})",
    )
