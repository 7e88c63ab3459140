"""``surelabel evaluate``: how good and how honest are the confidences on labelled rows?

Compares confidence methods side by side on the same rows: ``exact`` (the full label
distribution), ``seed`` (first value token of generated JSON; slow, so by default only for
up to 200 rows) and ``calibrated`` (a calibration file, or else cross-fitted: each fold
calibrated by a calibrator fitted on the other folds). The work is done by
:mod:`surelabel.evaluate`; this module parses arguments and prints.
"""

from __future__ import annotations

import argparse
from typing import Any

from numpy.typing import NDArray

from surelabel.cli.common import (
    add_backend_args,
    add_task_args,
    backend_from,
    method_options_from,
    task_from,
)
from surelabel.evaluate import (
    SEED_DEFAULT_MAX_ROWS,
    choose_methods,
    compare,
    from_predictions,
    read_labelled,
    score_labelled,
)
from surelabel.io import Row
from surelabel.methods import full_distribution_method
from surelabel.report import format_summary
from surelabel.task import Task


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
                   help="comma-separated, from exact,generic,seed,calibrated (default: all; "
                        f"seed only for up to {SEED_DEFAULT_MAX_ROWS} rows, as it is slow; "
                        "generic when one is shipped for the model); exact stands for the full "
                        "label distribution, measured by the best method the backend allows "
                        "(topk or sampling for APIs); generic for the task-independent "
                        "calibration classify uses by default")
    p.add_argument("--calibration", metavar="FILE",
                   help="calibration file for the calibrated column (default: cross-fitted)")
    p.add_argument("--folds", type=int, default=5, metavar="K",
                   help="folds for cross-fitted calibration (default: 5)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples for the 95%% intervals (default: 1000; 0 = none)")
    add_backend_args(p)
    p.set_defaults(func=run)


def labelled_from(args: argparse.Namespace, task: Task) -> tuple[list[Row], NDArray[Any]]:
    return read_labelled(args.labelled, task, text_field=args.text_field,
                         label_field=args.label_field, max_rows=args.max_rows)


def _methods(args: argparse.Namespace, n_rows: int) -> tuple[list[str], list[str]]:
    requested = args.methods.split(",") if args.methods else None
    return choose_methods(requested, n_rows, predictions=bool(args.predictions))


def run(args: argparse.Namespace) -> int:
    from surelabel.calibration import load

    task = task_from(args)
    rows, y = labelled_from(args, task)
    chosen, notes = _methods(args, len(rows))
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
            full = full_distribution_method(backend.capabilities)
            calibration.check_method(full, source=calibration.source)
            calibration.check_scoring(method_options_from(args).scoring_key(full, task),
                                      source=calibration.source)
        scored = score_labelled(backend, task, rows, y, with_seed="seed" in chosen,
                                quiet=args.quiet, options=method_options_from(args))
    report = compare(task, model, scored, methods_=chosen, calibration=calibration,
                     calibration_source=f"calibration file {args.calibration}",
                     requested_explicitly=args.methods.split(",") if args.methods else (),
                     folds=args.folds, n_bootstrap=args.bootstrap, notes=notes)
    print(format_summary(report))
    if args.json:
        from surelabel.report import write_json

        write_json(report, args.json)
    if args.report:
        from surelabel.report import write_html

        write_html(report, args.report)
    return 0
