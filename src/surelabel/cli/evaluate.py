"""``surelabel evaluate``: how good and how honest are the confidences on labelled rows?

Compares confidence methods side by side on the same rows: ``exact`` (the full label
distribution), ``seed`` (first value token of generated JSON; slow, so by default only for
up to 200 rows) and ``calibrated`` (a calibration file, or else cross-fitted: each fold
calibrated by a calibrator fitted on the other folds).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from surelabel import methods as method_registry
from surelabel.backends.base import Backend
from surelabel.calibration import CONTENT_FREE, fit_calibration, label_indices, load
from surelabel.calibration.base import softmax
from surelabel.cli.common import add_backend_args, add_task_args, backend_from, task_from
from surelabel.distribution import LabelDistribution
from surelabel.errors import BackendError, InputError
from surelabel.io import Row, read_rows
from surelabel.report import build_report, evaluate_probabilities, format_summary
from surelabel.task import Task

SEED_DEFAULT_MAX_ROWS = 200
METHOD_NAMES = ("exact", "seed", "calibrated")


def add_labelled_args(p: argparse.ArgumentParser) -> None:
    add_task_args(p)
    p.add_argument("labelled", help="JSONL or CSV rows with the text and its true label")
    p.add_argument("--text-field", default="text", metavar="NAME",
                   help="field holding the text (default: text)")
    p.add_argument("--label-field", default="label", metavar="NAME",
                   help="field holding the true label; a list of labels for multilabel tasks "
                        "(default: label)")
    p.add_argument("--max-rows", type=int, metavar="N", help="use only the first N rows")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="measure accuracy and calibration on labelled rows",
        description="Measure accuracy, calibration (ECE, Brier, log loss), the separation of "
                    "right and wrong answers (AUROC) and risk-coverage on labelled rows, "
                    "comparing confidence methods side by side.",
    )
    add_labelled_args(p)
    p.add_argument("--report", metavar="HTML", help="write a self-contained HTML report")
    p.add_argument("--json", metavar="FILE", help="write all metrics as JSON")
    p.add_argument("--predictions", metavar="JSONL",
                   help="use an existing `surelabel classify` output for these rows (matched "
                        "by id) instead of running the model")
    p.add_argument("--methods", metavar="LIST",
                   help="comma-separated, from exact,seed,calibrated (default: all three; "
                        f"seed only for up to {SEED_DEFAULT_MAX_ROWS} rows, as it is slow); "
                        "exact stands for the full label distribution, measured by the best "
                        "method the backend allows (topk or sampling for APIs)")
    p.add_argument("--calibration", metavar="FILE",
                   help="calibration file for the calibrated column (default: cross-fitted)")
    p.add_argument("--folds", type=int, default=5, metavar="K",
                   help="folds for cross-fitted calibration (default: 5)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples for the 95%% intervals (default: 1000; 0 = none)")
    add_backend_args(p)
    p.set_defaults(func=run)


@dataclass
class Scored:
    """Raw model outputs for labelled rows, aligned with ``rows``."""

    rows: list[Row]
    y: NDArray[Any]
    exact: NDArray[np.float64] | None = None  # (n, k) or (n, L, 2) log-probabilities
    content_free: NDArray[np.float64] | None = None
    extra: dict[str, NDArray[np.float64]] = field(default_factory=dict)  # name -> probabilities
    notes: list[str] = field(default_factory=list)
    method: str = "exact"  # the full-distribution method behind ``exact``


def read_labelled(args: argparse.Namespace, task: Task) -> tuple[list[Row], NDArray[Any]]:
    rows = read_rows(args.labelled, text_field=args.text_field)
    if args.max_rows is not None:
        rows = rows[: args.max_rows]
    missing = [r for r in rows if args.label_field not in r.extra]
    if missing:
        raise InputError(f"{args.labelled}:{missing[0].line}: no {args.label_field!r} field "
                         "(choose one with --label-field)")
    if not rows:
        raise InputError(f"{args.labelled}: no rows")
    values = [r.extra[args.label_field] for r in rows]
    if task.kind == "multilabel":
        values = [json.loads(v) if isinstance(v, str) and v.startswith("[") else v
                  for v in values]
    try:
        y = label_indices(task, values)
    except Exception as exc:
        raise InputError(f"{args.labelled}: {exc}") from exc
    return rows, y


def _dist_logprobs(dist: LabelDistribution) -> list[float]:
    lps = dist.logprobs
    if lps is not None and all(v is not None for v in lps):
        return [float(v) for v in lps if v is not None]
    # Methods that bound some labels only (top-k) or count answers (sampling).
    return [math.log(max(p, 1e-12)) for p in dist.probabilities]


def exact_logprobs(
    backend: Backend, task: Task, text: str, method: str = "exact"
) -> NDArray[np.float64]:
    """Raw label log-probabilities of one text: (k,) or, for multilabel, (L, 2).

    ``method`` is a full-distribution method: ``exact`` for local models; ``topk`` or
    ``sampling`` for APIs (see :func:`full_method`).
    """
    result = method_registry.METHODS[method](backend, task, text, False)
    if result.per_label is not None:
        return np.array([_dist_logprobs(result.per_label[n]) for n in task.label_names],
                        dtype=np.float64)
    assert result.distribution is not None
    return np.array(_dist_logprobs(result.distribution), dtype=np.float64)


def full_method(backend: Backend) -> str:
    """The best full-distribution method the backend supports (exact, topk, sampling)."""
    return method_registry.resolve("auto", backend.capabilities)


def seed_probabilities(backend: Backend, task: Task, text: str) -> NDArray[np.float64]:
    result = method_registry.seed(backend, task, text, False)
    if result.per_label is not None:
        return np.array([result.per_label[n].probabilities[0] for n in task.label_names])
    assert result.distribution is not None
    return np.array(result.distribution.probabilities, dtype=np.float64)


def score_labelled(
    backend: Backend,
    task: Task,
    rows: Sequence[Row],
    y: NDArray[Any],
    *,
    with_seed: bool,
    quiet: bool,
) -> Scored:
    """Run the exact method (and optionally seed) on every row; failed rows are dropped."""
    texts = [str(r.text) for r in rows]
    keep: list[int] = []
    exact: list[NDArray[np.float64]] = []
    seed: list[NDArray[np.float64]] = []
    full = full_method(backend)
    failed = {full: 0, "seed": 0}
    bar = tqdm(total=len(rows), file=sys.stderr, disable=quiet, delay=2.0, unit="item",
               dynamic_ncols=True)
    try:
        for i, text in enumerate(texts):
            bar.update(1)
            if not text.strip():
                failed[full] += 1
                continue
            try:
                lp = exact_logprobs(backend, task, text, full)
            except BackendError:
                failed[full] += 1
                continue
            if with_seed:
                try:
                    sp = seed_probabilities(backend, task, text)
                except BackendError:
                    failed["seed"] += 1
                    continue
                seed.append(sp)
            keep.append(i)
            exact.append(lp)
    finally:
        bar.close()
    notes = []
    for name, count in failed.items():
        if count:
            notes.append(f"{count} rows dropped: the {name} method failed on them "
                         "(every method is compared on the same rows)")
    if not keep:
        raise InputError("no row could be scored")
    cf = np.stack([exact_logprobs(backend, task, t, full) for t in CONTENT_FREE])
    scored = Scored(rows=[rows[i] for i in keep], y=y[keep], exact=np.stack(exact),
                    content_free=cf, notes=notes, method=full)
    if with_seed:
        scored.extra["seed"] = np.stack(seed)
    return scored


def probabilities_of(task: Task, logprobs: NDArray[np.float64]) -> NDArray[np.float64]:
    """Normalized probabilities: (n, k), or (n, L) P(label applies) for multilabel."""
    if task.kind == "multilabel":
        return np.stack([softmax(logprobs[:, j, :])[:, 0] for j in range(logprobs.shape[1])],
                        axis=1)
    return softmax(logprobs)


def from_predictions(path: str, task: Task, rows: list[Row], y: NDArray[Any]) -> Scored:
    """Read a ``classify`` output and align it with the labelled rows by id."""
    records = {}
    for r in read_rows(path, text_field="text", fmt="jsonl"):
        records[str(r.id)] = r.extra
    keep, probs = [], []
    missing = errors = 0
    method = "predictions"
    for i, row in enumerate(rows):
        rec = records.get(str(row.id))
        if rec is None:
            missing += 1
            continue
        p = rec.get("probabilities")
        if rec.get("error") or not isinstance(p, dict):
            errors += 1
            continue
        try:
            probs.append([float(p[name]) for name in task.label_names])
        except KeyError as exc:
            raise InputError(f"{path}: record {row.id!r} has no probability for label {exc}; "
                             "was it made for another task?") from exc
        keep.append(i)
        method = str(rec.get("method") or method) + (" (calibrated)" if rec.get("calibrated")
                                                     else "")
    if not keep:
        raise InputError(f"{path}: no record matches a labelled row by id")
    p_arr = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)
    notes = [f"predictions from {path} ({method})"]
    if missing or errors:
        notes.append(f"{missing} labelled rows had no prediction and {errors} had an error "
                     "record; they are left out")
    if task.kind == "multilabel":
        lp = np.log(np.stack([p_arr, np.clip(1 - p_arr, 1e-12, 1.0)], axis=2))
    else:
        lp = np.log(p_arr / p_arr.sum(axis=1, keepdims=True))
    return Scored(rows=[rows[i] for i in keep], y=y[keep], exact=lp, notes=notes)


def _methods(args: argparse.Namespace, n_rows: int) -> tuple[list[str], list[str]]:
    notes = []
    if args.methods:
        chosen = [m.strip() for m in args.methods.split(",") if m.strip()]
        bad = [m for m in chosen if m not in METHOD_NAMES]
        if bad:
            raise InputError(f"--methods: unknown method {bad[0]!r}; expected some of "
                             f"{', '.join(METHOD_NAMES)}")
    else:
        chosen = list(METHOD_NAMES)
        if n_rows > SEED_DEFAULT_MAX_ROWS:
            chosen.remove("seed")
            notes.append(f"seed method skipped: {n_rows} rows > {SEED_DEFAULT_MAX_ROWS} and it "
                         "generates a whole answer per row (ask for it with --methods)")
    if args.predictions and "seed" in chosen:
        chosen.remove("seed")
        notes.append("seed method skipped: --predictions given, the model is not run")
    return chosen, notes


def run(args: argparse.Namespace) -> int:
    task = task_from(args)
    rows, y = read_labelled(args, task)
    chosen, notes = _methods(args, len(rows))
    model = "?"
    calibration = None
    if args.predictions:
        scored = from_predictions(args.predictions, task, rows, y)
        model = "from predictions"
        if args.calibration:
            calibration = load(args.calibration, task)
    else:
        backend = backend_from(args)
        model = backend.model_name
        if args.calibration:
            calibration = load(args.calibration, task, model)
            calibration.check_method(full_method(backend),
                                     source=f"calibration file {args.calibration}")
        scored = score_labelled(backend, task, rows, y, with_seed="seed" in chosen,
                                quiet=args.quiet)
    assert scored.exact is not None
    notes = scored.notes + notes
    results: dict[str, dict[str, Any]] = {}
    ev = {"n_bootstrap": args.bootstrap}
    raw_name = scored.method if not args.predictions else "predictions"
    if "exact" in chosen or args.predictions:
        results[raw_name] = evaluate_probabilities(
            task, probabilities_of(task, scored.exact), scored.y, **ev)
    if "seed" in scored.extra:
        results["seed"] = evaluate_probabilities(task, scored.extra["seed"], scored.y, **ev)
    if "calibrated" in chosen:
        if calibration is not None:
            probs = calibration.calibrator.predict_proba(scored.exact)
            notes.append(f"calibrated: calibration file {args.calibration} "
                         f"(method {calibration.method}, fitted on {calibration.n_fitted} rows)")
        elif len(scored.y) >= 10:
            sel, probs = fit_calibration(task, model, scored.exact, scored.y,
                                     content_free=scored.content_free, folds=args.folds)
            notes.append(f"calibrated: cross-fitted ({args.folds} folds; each row calibrated by "
                         f"a calibrator fitted on the other folds); "
                         f"{(sel.selection or {}).get('reason', '')}")
        else:
            probs = None
            notes.append("calibrated: skipped, fewer than 10 rows to cross-fit on")
        if probs is not None:
            results["calibrated"] = evaluate_probabilities(task, probs, scored.y, **ev)
    report = build_report(task, model, results, notes=notes)
    print(format_summary(report))
    if args.json:
        from surelabel.report import write_json

        write_json(report, args.json)
    if args.report:
        from surelabel.report import write_html

        write_html(report, args.report)
    return 0
