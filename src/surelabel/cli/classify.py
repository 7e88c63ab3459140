"""``surelabel classify``: label every row of an input file."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from surelabel.backends.registry import BackendSpec, build_backend
from surelabel.batch import classify_ordered, resume_output
from surelabel.classifier import Classifier
from surelabel.cli.common import (
    add_backend_args,
    add_task_args,
    add_threshold_args,
    backend_spec_from,
    method_options_from,
    task_from,
    thresholds_from,
)
from surelabel.errors import UserError
from surelabel.io import (
    OUTPUT_FORMATS,
    CsvWriter,
    RecordWriter,
    Row,
    check_not_input,
    format_table,
    is_directory_output,
    merge_columns,
    open_writer,
    output_format,
    read_rows,
    record_columns,
)
from surelabel.task import Task, Thresholds

#: Rows per Ray task by default: small enough to spread a short job over the workers,
#: large enough that Ray's per-task cost is small beside classifying the rows.
RAY_BATCH = 16


def register(sub: Any) -> None:
    p = sub.add_parser(
        "classify",
        help="classify the rows of a file (or stdin) and write one record per row",
        description="Classify every row and write one record per row, in input order.",
    )
    add_task_args(p)
    p.add_argument("input", nargs="?", default="-",
                   help="JSONL, CSV (with header), Parquet, plain text lines, or a directory "
                        "of such files; default: stdin")
    p.add_argument("-o", "--output", metavar="FILE|DIR",
                   help="write records here: .jsonl, .csv or .parquet, or a directory (a "
                        "path ending with /) of numbered parts (default: stdout)")
    p.add_argument("--format", choices=(*OUTPUT_FORMATS, "table"), default=None,
                   help="output format (default: from the -o extension; JSONL on stdout); "
                        "table: a table on stdout, besides any -o file")
    p.add_argument("--input-format", choices=("jsonl", "csv", "parquet", "lines"),
                   help="input format (default: from the file suffix or content)")
    p.add_argument("--text-field", default="text", metavar="NAME",
                   help="field or column holding the text (default: text)")
    p.add_argument("--keep-columns", action=argparse.BooleanOptionalAction, default=True,
                   help="pass every other input column through to the output (default: on; "
                        "a column named like an output field is kept as input_<name>)")
    p.add_argument("--rows-per-file", type=int, default=10_000, metavar="N",
                   help="rows per part of a directory output (default: 10000)")
    p.add_argument("--method", default="auto",
                   help="confidence method: auto (best the backend allows), exact, seed, "
                        "topk (API logprobs), sampling (API without logprobs)")
    p.add_argument("--no-reason", action="store_true",
                   help="skip generating a reason (faster)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true",
                   help="start the output afresh (default: resume a JSONL or CSV output, "
                        "classifying only the rows it does not hold yet; a Parquet file "
                        "cannot be resumed)")
    p.add_argument("--calibration", metavar="FILE|none|generic",
                   help="a calibration file from `surelabel calibrate` (with its accept "
                        "threshold and label sets, unless --accept is given); 'generic': the "
                        "task-independent calibration shipped for the model (the default "
                        "when there is one); 'generic:FILE': one built with "
                        "bench/bench_generic.py; 'none': the raw probabilities")
    add_threshold_args(p)
    add_backend_args(p)
    scale = p.add_argument_group("scale-out (pip install 'surelabel[ray]')")
    scale.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="local: this process; ray: workers on a Ray cluster, each loading "
                            "the model once (default: local)")
    scale.add_argument("--ray-address", metavar="ADDR",
                       help="Ray cluster to use, e.g. 10.0.0.5:6379 (default: $RAY_ADDRESS, "
                            "else a local cluster on this machine)")
    scale.add_argument("--workers", type=int, default=None, metavar="N",
                       help="Ray workers (default: the cluster's CPUs / the threads per worker)")
    scale.add_argument("--ray-batch-size", type=int, default=None, metavar="N",
                       help=f"rows per Ray task (default: {RAY_BATCH})")
    p.set_defaults(func=run)


def _formats(args: argparse.Namespace) -> tuple[str | None, bool]:
    """(the format of the records written to -o or stdout, or None; whether a table is
    printed on stdout)."""
    table = args.format == "table"
    if args.output and args.output != "-":
        return output_format(args.output, None if table else args.format), table
    if table:
        return None, True
    fmt = args.format or "jsonl"
    if fmt == "parquet":
        raise UserError("Parquet output needs a file or directory: -o out.parquet")
    return fmt, False


def _spec(args: argparse.Namespace) -> BackendSpec:
    spec = backend_spec_from(args)
    if args.engine == "ray" and spec.name == "llamacpp" and "n_threads" not in spec.options:
        # One thread per worker unless asked: Ray runs one worker per CPU.
        spec = spec.with_options(n_threads=1)
    return spec


def run(args: argparse.Namespace) -> int:
    task = task_from(args)
    thresholds = thresholds_from(args, task)
    if args.ray_batch_size is not None and args.ray_batch_size < 1:
        raise UserError("--ray-batch-size must be at least 1")
    if args.engine != "ray":
        for flag, value in (("--workers", args.workers), ("--ray-address", args.ray_address),
                            ("--ray-batch-size", args.ray_batch_size)):
            if value is not None:
                hint = (" (requests in flight to an API: --concurrency)"
                        if flag == "--workers" else "")
                raise UserError(f"{flag} applies to --engine ray{hint}")
    fmt, table = _formats(args)
    check_not_input(args.output, [args.input])
    rows = read_rows(args.input, text_field=args.text_field, fmt=args.input_format)
    spec = _spec(args)
    if args.engine != "ray":
        return _run(args, task, thresholds, rows, spec, fmt, table)
    from surelabel import ray as surelabel_ray

    started = surelabel_ray.init(args.ray_address, quiet=True)
    try:
        return _run(args, task, thresholds, rows, spec, fmt, table)
    finally:
        if started:
            import ray

            ray.shutdown()


def _generic_file(path: str) -> Any:
    import json

    from surelabel.calibration.generic import GenericCalibration

    source = f"generic calibration file {path}"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise UserError(f"{source}: not valid JSON") from exc
    return GenericCalibration.from_dict(data, source=source)


def _say_what_confidence_is(kind: str, skipped: str | None, task_file: str) -> None:
    """One line on stderr when the decisions do not rest on a task calibration."""
    how = (f"fit a task calibration on labelled rows with `surelabel calibrate {task_file} "
           "labelled.jsonl -o calibration.json` and pass --calibration calibration.json")
    if kind == "generic":
        print("surelabel: confidences come from the generic (task-independent) calibration "
              f"of this model, not from one fitted on this task; {how}", file=sys.stderr)
    elif kind == "none":
        why = f" ({skipped})" if skipped else ""
        print(f"surelabel: confidences are the model's raw probabilities, uncalibrated{why}; "
              f"{how}", file=sys.stderr)


def _run(
    args: argparse.Namespace,
    task: Task,
    thresholds: Thresholds,
    rows: list[Row],
    spec: BackendSpec,
    fmt: str | None,
    table: bool,
) -> int:
    ray_engine = args.engine == "ray"
    # Locally the backend is built here; on Ray each worker builds its own from the spec.
    backend: Any = spec if ray_engine else build_backend(spec)
    calibration: Any = "auto"
    wanted = args.calibration
    if wanted in ("none", "generic"):
        calibration = "none" if wanted == "none" else "auto"
    elif wanted and wanted.startswith("generic:"):
        calibration = _generic_file(wanted.partition(":")[2])
    elif wanted:
        from surelabel.calibration import load as load_calibration

        model = None if ray_engine else backend.model_name
        calibration = load_calibration(wanted, task, model)
        calibration.source = f"calibration file {wanted}"
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
    if ray_engine:
        from surelabel import ray as surelabel_ray

        # Resolved on a worker: the method, the model, and the calibration's checks.
        described = surelabel_ray.describe(classifier)
        method, model = described["method"], described["model"]
        kind, skipped = described["calibration"], described["generic_skipped"]
    else:
        method, model = classifier.method, backend.model_name
        kind, skipped = classifier.calibration, classifier.generic_skipped
    if wanted == "generic" and kind != "generic":
        raise UserError(f"--calibration generic: none applies ({skipped})")
    if not args.quiet:
        _say_what_confidence_is(kind, skipped, args.task)
    to_file = bool(args.output) and args.output != "-"
    resumed = 0
    if to_file and not args.overwrite:
        resumed = resume_output(args.output, rows, {"method": method, "model": model}, fmt=fmt)
        if resumed and not args.quiet:
            print(f"surelabel: resuming {args.output}: {resumed} of {len(rows)} rows done",
                  file=sys.stderr)
    columns = record_columns(task.label_names, multilabel=task.kind == "multilabel")
    writer: RecordWriter | None = None
    if fmt is not None:
        writer = open_writer(args.output if to_file else None, fmt, append=resumed > 0,
                             columns=columns, rows_per_file=args.rows_per_file)
    table_rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(rows), initial=resumed, file=sys.stderr, disable=args.quiet,
               delay=2.0, unit="item", dynamic_ncols=True)
    todo = rows[resumed:]
    try:
        for record in _records(args, classifier, todo):
            if writer is not None:
                writer.write(record)
            if table:
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
    if isinstance(writer, CsvWriter) and writer.dropped:
        print(f"surelabel: CSV on stdout: column(s) {', '.join(sorted(writer.dropped))} "
              "appeared after the header was written and were left out; write to a file "
              "(-o out.csv) to keep them", file=sys.stderr)
    if table:
        print(format_table(table_rows))
    if to_file and is_directory_output(args.output) and not args.quiet:
        print(f"surelabel: wrote {len(rows)} rows to {args.output}", file=sys.stderr)
    return 0


def _records(
    args: argparse.Namespace, classifier: Classifier, rows: list[Row]
) -> Iterator[dict[str, Any]]:
    """Output records in input order, input columns passed through when asked."""
    if args.engine == "ray":
        from surelabel import ray as surelabel_ray

        yield from surelabel_ray.classify_rows(
            rows, classifier, workers=args.workers, batch_size=args.ray_batch_size or RAY_BATCH,
            keep_columns=args.keep_columns,
        )
        return
    # As many items in flight as the backend declares it can serve (an API's
    # --concurrency; 1 for a local model, which scores a batch of items together).
    results = classify_ordered(classifier, rows)
    for row, result in zip(rows, results):
        record = result.to_dict()
        yield merge_columns(record, row.extra) if args.keep_columns else record
