"""Batch runs: classify many rows concurrently, in input order, and resume a killed run.

An output is written strictly in input order, one flushed line per row (JSONL, CSV), so
after a crash (even ``kill -9``) it holds a prefix of the final output, possibly followed
by one torn line. :func:`resume_output` keeps that prefix (checking it belongs to this
input) and drops the torn tail; the run then classifies only the rows after it. A
directory of parts resumes the same way, part by part. A single Parquet file cannot be
appended to, so it cannot be resumed: :func:`resume_output` says so.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from surelabel.classifier import Classifier, Record, classify_pairs
from surelabel.errors import InputError
from surelabel.io import Row, csv_cell, is_directory_output, iter_records, output_format, part_paths

_REDO = "remove the file or pass --overwrite"


def _same(a: object, b: object) -> bool:
    # Compare as JSON would store them (tuples become lists, CSV ids stay strings).
    plain: object = json.loads(json.dumps(a, ensure_ascii=False, default=str))
    return plain == b


def _check(
    where: str, obj: Any, rows: Sequence[Row], n: int, expect: Mapping[str, Any] | None,
    fmt: str,
) -> None:
    """Raise unless ``obj`` is the output of input row ``n`` (0-based)."""
    if n >= len(rows):
        raise InputError(f"{where} holds more rows than the input; pass --overwrite")
    row = rows[n]

    def same(want: Any, got: Any) -> bool:
        if fmt == "csv":
            return bool(csv_cell(want) == got)
        if fmt == "parquet":
            return _same(want, got) or (got is not None and csv_cell(want) == csv_cell(got))
        return _same(want, got)

    if not isinstance(obj, Mapping) or not same(row.id, obj.get("id")) or not same(
        row.text, obj.get("text")
    ):
        raise InputError(
            f"{where}: does not match input row {n + 1} (id or text differ); {_REDO}"
        )
    for name, value in (expect or {}).items():
        if not same(value, obj.get(name)):
            raise InputError(
                f"{where}: made with {name} {obj.get(name)!r}, not {value!r}; {_REDO}"
            )


def resume_output(
    path: str | os.PathLike[str],
    rows: Sequence[Row],
    expect: Mapping[str, Any] | None = None,
    *,
    fmt: str | None = None,
) -> int:
    """How many rows an existing output already holds; truncates a torn last line.

    ``fmt`` is the output's format (default: from the path, see
    :func:`surelabel.io.output_format`). Raises :class:`~surelabel.errors.InputError` when
    the output holds rows of another input (ids or texts differ), more rows than the input
    has, rows whose fields differ from ``expect`` (e.g. made with another method or model),
    or is a Parquet file (which cannot be appended to).
    """
    chosen = output_format(path, fmt)
    if is_directory_output(path):
        return _resume_directory(Path(path), chosen, rows, expect)
    p = Path(path)
    if not p.is_file():
        return 0
    if chosen == "parquet":
        raise InputError(
            f"{path} exists, and a Parquet file cannot be appended to, so this run cannot "
            "resume it: pass --overwrite to start afresh, or write .jsonl, .csv or a "
            "directory of parts (-o DIR/), which resume"
        )
    if chosen == "csv":
        return _resume_csv(p, rows, expect)
    return _resume_jsonl(p, rows, expect)


def _resume_directory(
    root: Path, fmt: str, rows: Sequence[Row], expect: Mapping[str, Any] | None
) -> int:
    parts = part_paths(root)
    others = [p.name for p in parts if p.suffix != f".{fmt}"]
    if others:
        raise InputError(f"{root} holds parts of another format ({others[0]}), not {fmt}; "
                         "pass --overwrite")
    done = 0
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if fmt == "parquet":
            for obj in iter_records(part):
                _check(f"{part}:{done + 1}", obj, rows, done, expect, fmt)
                done += 1
            continue
        resume = _resume_csv if fmt == "csv" else _resume_jsonl
        n = resume(part, rows[done:], expect, first=done, truncate=last)
        done += n
    return done


def _resume_jsonl(
    p: Path, rows: Sequence[Row], expect: Mapping[str, Any] | None, *, first: int = 0,
    truncate: bool = True,
) -> int:
    data = p.read_bytes()
    keep = count = pos = 0
    if data.startswith(b"\xef\xbb\xbf"):
        pos = keep = 3
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            break  # a torn last line: written in part when the run died
        line = data[pos:end]
        try:
            obj = json.loads(line) if line.strip() else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            if data.find(b"\n", end + 1) < 0 and not data[end + 1 :].strip():
                break  # the last line is damaged: redo it
            raise InputError(
                f"{p}:{count + 1}: not a JSON record; {_REDO}"
            ) from None
        if obj is not None:
            _check(f"{p}:{count + 1}", obj, _Offset(rows, first), first + count, expect, "jsonl")
            count += 1
        pos = keep = end + 1
    if keep < len(data):
        if not truncate:
            raise InputError(f"{p}: a torn line before the last part; {_REDO}")
        with open(p, "r+b") as fh:
            fh.truncate(keep)
    return count


class _Offset(Sequence[Row]):
    """``rows`` seen from row ``first`` of the whole input (messages number rows in it)."""

    def __init__(self, rows: Sequence[Row], first: int) -> None:
        self.rows = rows
        self.first = first

    def __len__(self) -> int:
        return len(self.rows) + self.first

    def __getitem__(self, i: Any) -> Any:
        return self.rows[i - self.first]


def _resume_csv(
    p: Path, rows: Sequence[Row], expect: Mapping[str, Any] | None, *, first: int = 0,
    truncate: bool = True,
) -> int:
    data = p.read_bytes()
    start = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    lines: list[tuple[str, int]] = []
    pos = start
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            break  # no newline: a torn last row
        try:
            lines.append((data[pos : end + 1].decode("utf-8"), end + 1))
        except UnicodeDecodeError:
            break  # cut inside a character: the row is torn
        pos = end + 1
    consumed = [start]

    def feed() -> Iterator[str]:
        for text, end_at in lines:
            consumed[0] = end_at
            yield text

    reader = csv.reader(feed(), strict=True)
    keep = start
    count = 0
    try:
        header = next(reader, None)
        if header is not None:
            keep = consumed[0]
            for cells in reader:
                if len(cells) != len(header):
                    raise InputError(f"{p}:{count + 2}: {len(cells)} cells, the header has "
                                     f"{len(header)}; {_REDO}")
                obj = dict(zip(header, cells))
                _check(f"{p}:{count + 2}", obj, _Offset(rows, first), first + count, expect,
                       "csv")
                count += 1
                keep = consumed[0]
    except csv.Error:
        pass  # a quoted cell never closed: the last row was written in part
    if keep < len(data):
        if not truncate:
            raise InputError(f"{p}: a torn row before the last part; {_REDO}")
        with open(p, "r+b") as fh:
            fh.truncate(keep)
    return count


def classify_ordered(
    classifier: Classifier,
    rows: Sequence[Row],
    workers: int | None = None,
    *,
    batch_size: int | None = None,
) -> Iterator[Record]:
    """Classify rows, yielding records in input order.

    ``workers`` items are in flight at once (default: the backend's declared concurrency,
    :attr:`Classifier.workers`); a bounded window of pending rows keeps memory flat on large
    inputs. With one worker, rows go to the classifier ``batch_size`` at a time (default:
    :attr:`Classifier.batch_size`, what the backend declares), so a local model can
    evaluate several items together.
    """
    n_workers = classifier.workers if workers is None else workers
    size = 1
    if n_workers <= 1:
        size = max(1, classifier.batch_size if batch_size is None else batch_size)
    return classify_pairs(classifier, ((row.id, row.text) for row in rows),
                          workers=n_workers, batch_size=size)
