"""``surelabel classify``: label every row of an input file."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tqdm import tqdm

from surelabel.batch import classify_ordered, resume_output
from surelabel.classifier import Classifier
from surelabel.cli.common import (
    add_backend_args,
    add_task_args,
    add_threshold_args,
    backend_from,
    method_options_from,
    task_from,
    thresholds_from,
)
from surelabel.io import JsonlWriter, format_table, read_rows


def register(sub: Any) -> None:
    p = sub.add_parser(
        "classify",
        help="classify the rows of a file (or stdin) and write one JSON record per row",
        description="Classify every row and write one JSON record per row, in input order.",
    )
    add_task_args(p)
    p.add_argument("input", nargs="?", default="-",
                   help="JSONL, CSV (with header) or plain text lines; default: stdin")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write JSONL records here (default: stdout)")
    p.add_argument("--format", choices=("jsonl", "table"), default="jsonl",
                   help="stdout format when no --output is given, or in addition to it")
    p.add_argument("--input-format", choices=("jsonl", "csv", "lines"),
                   help="input format (default: from the file suffix or content)")
    p.add_argument("--text-field", default="text", metavar="NAME",
                   help="field or column holding the text (default: text)")
    p.add_argument("--method", default="auto",
                   help="confidence method: auto (best the backend allows), exact, seed, "
                        "topk (API logprobs), sampling (API without logprobs)")
    p.add_argument("--no-reason", action="store_true",
                   help="skip generating a reason (faster)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true",
                   help="start the output file afresh (default: resume it, classifying "
                        "only the rows it does not hold yet)")
    p.add_argument("--calibration", metavar="FILE",
                   help="apply a calibration file from `surelabel calibrate` (and its accept "
                        "threshold and label sets, unless --accept is given)")
    add_threshold_args(p)
    add_backend_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    task = task_from(args)
    thresholds = thresholds_from(args, task)
    rows = read_rows(args.input, text_field=args.text_field, fmt=args.input_format)
    backend = backend_from(args)
    calibration = None
    if args.calibration:
        from surelabel.calibration import load as load_calibration

        calibration = load_calibration(args.calibration, task, backend.model_name)
        thresholds = calibration.thresholds(thresholds, accept_given=args.accept is not None)
    classifier = Classifier(
        task,
        backend,
        method=args.method,
        reason=False if args.no_reason else None,
        thresholds=thresholds,
        calibrator=calibration,
        options=method_options_from(args),
    )
    if calibration is not None:
        calibration.check_method(classifier.method, source=f"calibration file {args.calibration}")
    to_stdout_jsonl = args.output is None and args.format == "jsonl"
    resumed = 0
    if args.output and args.output != "-" and not args.overwrite:
        resumed = resume_output(args.output, rows,
                                {"method": classifier.method, "model": backend.model_name})
        if resumed and not args.quiet:
            print(f"surelabel: resuming {args.output}: {resumed} of {len(rows)} rows done",
                  file=sys.stderr)
    writer = (JsonlWriter(args.output, append=resumed > 0)
              if args.output or to_stdout_jsonl else None)
    table_rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(rows), initial=resumed, file=sys.stderr, disable=args.quiet,
               delay=2.0, unit="item", dynamic_ncols=True)
    try:
        # As many items in flight as the backend declares it can serve (an API's
        # --concurrency; 1 for a local model).
        for result in classify_ordered(classifier, rows[resumed:]):
            record = result.to_dict()
            if writer is not None:
                writer.write(record)
            if args.format == "table":
                table_rows.append(record)
            bar.update(1)
    except KeyboardInterrupt:
        bar.close()
        done = resumed + (writer.count if writer is not None else len(table_rows))
        print(f"surelabel: interrupted after {done} of {len(rows)} rows; "
              "the output holds every completed row", file=sys.stderr)
        return 130
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    if args.format == "table":
        print(format_table(table_rows))
    return 0
