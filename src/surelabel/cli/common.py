"""Options shared by several sub-commands."""

from __future__ import annotations

import argparse
import inspect
import os
from typing import Any

from surelabel.backends import Backend
from surelabel.backends.base import SAMPLES, SAMPLING_TEMPERATURE
from surelabel.backends.registry import BackendSpec, backend_factory, build_backend, parse_value
from surelabel.errors import UserError
from surelabel.methods import DEFAULT_MULTILABEL_MODE, MULTILABEL_MODES, MethodOptions
from surelabel.prompt import DEFAULT_PROMPT_STYLE, PROMPT_STYLES
from surelabel.task import Task, Thresholds, load_task


def add_task_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", help="task file (YAML or JSON)")


def add_backend_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--backend", default="llamacpp", metavar="NAME[:OPTIONS]",
        help="where the model runs: a backend registered in the surelabel.backends "
             "entry-point group (built in: llamacpp, the embedded model; openai; "
             "transformers, PyTorch on CPU or GPU; fake, for tests), optionally with "
             "options, e.g. 'llamacpp:n_batch=256' or "
             "'openai:{\"max_retries\": 2}' (default: llamacpp)")
    group.add_argument("--model", metavar="PATH",
                       help="GGUF file for llamacpp (default: embedded SmolLM2-135M-Instruct); "
                            "model directory or GGUF file for transformers (same default); "
                            "model name for openai (default: the first the server lists)")
    group.add_argument("--n-ctx", type=int, default=None, metavar="N",
                       help="context window in tokens (llamacpp default: 2048)")
    group.add_argument("--threads", type=int, default=None, metavar="N",
                       help="CPU threads (llamacpp default: every core; serve: half)")
    group.add_argument("--device", default=None, metavar="DEVICE",
                       help="where a PyTorch model runs (transformers): auto, cpu, cuda, "
                            "cuda:1 ... (default: auto, CUDA when available)")
    group.add_argument("--dtype", default=None, metavar="DTYPE",
                       help="weights' dtype (transformers): auto, float32, bfloat16, float16 "
                            "(default: auto, float32 on the CPU)")
    group.add_argument("--batch-size", type=int, default=None, metavar="N",
                       help="items scored in one forward pass (transformers default: 8 on "
                            "the CPU, 64 on a GPU)")
    group.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE",
                       help="any other option of the backend (a JSON value or a string); "
                            "repeatable")
    api = parser.add_argument_group("OpenAI-compatible API (--backend openai)")
    api.add_argument("--base-url", metavar="URL",
                     help="API base URL, e.g. http://127.0.0.1:8080/v1 (default: "
                          "$OPENAI_BASE_URL, else OpenAI's)")
    api.add_argument("--api-key", default=None, metavar="KEY",
                     help="API key (default: $OPENAI_API_KEY; a non-OpenAI base URL needs none)")
    api.add_argument("--header", action="append", default=[], metavar="NAME:VALUE",
                     help="extra HTTP header, repeatable (Azure api-key, proxies)")
    api.add_argument("--concurrency", type=int, default=None, metavar="N",
                     help="requests in flight at most (default: 8)")
    api.add_argument("--max-rpm", type=int, metavar="N", help="cap on requests per minute")
    api.add_argument("--max-tpm", type=int, metavar="N", help="cap on tokens per minute")
    api.add_argument("--top-logprobs", type=int, default=None, metavar="K",
                     help="alternatives per token to request (default: 20, OpenAI's maximum; "
                          "0: the server gives no logprobs, use sampling)")
    api.add_argument("--timeout", type=float, default=None, metavar="S",
                     help="seconds before a request is abandoned and retried (default: 60)")
    api.add_argument("--samples", type=int, default=SAMPLES, metavar="N",
                     help=f"answers drawn per item by --method sampling (default: {SAMPLES})")
    api.add_argument("--sampling-temperature", type=float, default=SAMPLING_TEMPERATURE,
                     metavar="T", help="temperature of --method sampling "
                                       f"(default: {SAMPLING_TEMPERATURE})")
    api.add_argument("--no-cache", action="store_true",
                     help="do not read or write the response cache ($SURELABEL_CACHE_DIR)")
    scoring = parser.add_argument_group("how labels are scored")
    scoring.add_argument("--prompt-style", choices=PROMPT_STYLES, default=DEFAULT_PROMPT_STYLE,
                         help="how the answer format is shown: placeholder (the labels listed "
                              "apart, a placeholder in the JSON example) or listed (the labels "
                              "written into the JSON example, which primes the first one) "
                              f"(default: {DEFAULT_PROMPT_STYLE})")
    scoring.add_argument("--permutations", type=int, default=1, metavar="K",
                         help="score every item under K label orders and average (costs K "
                              "times the scoring; default: 1)")
    scoring.add_argument("--multilabel-mode", choices=MULTILABEL_MODES,
                         default=DEFAULT_MULTILABEL_MODE,
                         help="how the exact method scores a multilabel task: sequential "
                              "(each label after the answers fixed for the labels before "
                              "it, one scoring round per label) or independent (every label "
                              "on its own after the answer's opening, all in one round); "
                              "other methods generate the whole answer and ignore it "
                              f"(default: {DEFAULT_MULTILABEL_MODE})")
    scoring.add_argument("--shortlist", type=int, default=0, metavar="K",
                         help="exact method, single-label task: score only the labels under "
                              "the most probable first tokens of the answer, K tokens a "
                              "round until the best scored label beats every cut label's "
                              "upper bound (so the label is the one scoring every label "
                              "gives); the cut ones share an estimate of their mass, and "
                              "records say labels_scored, cut_mass (the estimate) and "
                              "cut_bound (its upper bound) (default: 0, every label; for "
                              "hundreds of labels)")
    debias = scoring.add_mutually_exclusive_group()
    debias.add_argument("--debias", dest="debias", action="store_true",
                        default=MethodOptions().debias,
                        help="divide out the model's label prior, estimated from "
                             "content-free inputs (default: on for the exact method)")
    debias.add_argument("--no-debias", dest="debias", action="store_false",
                        help="keep the model's raw label prior")


#: Command-line flag -> backend option, for the flags that map onto backend options.
BACKEND_FLAGS: dict[str, str] = {
    "model": "model",
    "n_ctx": "n_ctx",
    "threads": "n_threads",
    "base_url": "base_url",
    "api_key": "api_key",
    "concurrency": "concurrency",
    "max_rpm": "max_rpm",
    "max_tpm": "max_tpm",
    "top_logprobs": "top_logprobs",
    "timeout": "timeout",
    "device": "device",
    "dtype": "dtype",
    "batch_size": "batch_size",
}


def _accepts(factory: Any, option: str) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return True
    return option in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def backend_spec_from(args: argparse.Namespace) -> BackendSpec:
    """The backend spec the flags ask for: ``--backend NAME[:OPTIONS]``, the flags that
    name backend options (refused, in one line, where the backend has no such option) and
    ``--backend-option`` pairs."""
    spec = BackendSpec.parse(args.backend)
    factory = backend_factory(spec.name)
    given: dict[str, Any] = {}
    for flag, option in BACKEND_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            given[option] = value
    if args.header:
        given["headers"] = _headers(args.header)
    for item in args.backend_option:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"--backend-option {item!r}: expected KEY=VALUE")
        given[key.strip()] = parse_value(value.strip())
    for option in given:
        if not _accepts(factory, option):
            flags = [f for f, o in BACKEND_FLAGS.items() if o == option]
            what = f"--{flags[0].replace('_', '-')}" if flags else f"option {option!r}"
            raise UserError(f"{what} does not apply to the {spec.name} backend")
    # The response cache is on by default where a backend has one.
    if _accepts(factory, "cache") and "cache" not in spec.options:
        given.setdefault("cache", not args.no_cache)
    return spec.with_options(**given)


def backend_from(args: argparse.Namespace) -> Backend:
    """Build the backend the flags ask for (see :func:`backend_spec_from`)."""
    return build_backend(backend_spec_from(args))


def method_options_from(args: argparse.Namespace) -> MethodOptions:
    return MethodOptions(samples=args.samples, sampling_temperature=args.sampling_temperature,
                         prompt=args.prompt_style, permutations=args.permutations,
                         debias=args.debias, multilabel_mode=args.multilabel_mode,
                         shortlist=args.shortlist)


def _headers(items: list[str]) -> dict[str, str]:
    headers = {}
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise UserError(f"--header {item!r}: expected NAME:VALUE")
        headers[name.strip()] = value.strip()
    return headers


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


DEFAULT_DB = "sqlite:///surelabel.db"


def add_db_arg(parser: argparse.ArgumentParser) -> None:
    """``--db``: the review store (serve, users, tokens, export)."""
    parser.add_argument(
        "--db", default=os.environ.get("SURELABEL_DB", DEFAULT_DB), metavar="URL",
        help="database URL: sqlite:///FILE or postgresql://USER:PW@HOST/DB "
             f"(default: $SURELABEL_DB, else {DEFAULT_DB})",
    )
