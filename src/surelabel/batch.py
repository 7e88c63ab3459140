"""Batch runs: classify many rows concurrently, in input order, and resume a killed run.

The output file is written strictly in input order, one flushed line per row, so after a
crash (even ``kill -9``) it holds a prefix of the final output, possibly followed by one
torn line. :func:`resume_output` keeps that prefix (checking it belongs to this input) and
drops the torn tail; the run then classifies only the rows after it.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from surelabel.classifier import Classifier, Record
from surelabel.errors import InputError
from surelabel.io import Row


def _same(a: object, b: object) -> bool:
    # Compare as JSON would store them (tuples become lists, CSV ids stay strings).
    return bool(json.loads(json.dumps(a, ensure_ascii=False)) == b)


def resume_output(
    path: str | os.PathLike[str],
    rows: Sequence[Row],
    expect: Mapping[str, Any] | None = None,
) -> int:
    """How many rows an existing output file already holds; truncates a torn last line.

    Raises :class:`~surelabel.errors.InputError` when the file holds rows of another input
    (ids or texts differ), more rows than the input has, or rows whose fields differ from
    ``expect`` (e.g. made with another method or model).
    """
    p = Path(path)
    if not p.is_file():
        return 0
    data = p.read_bytes()
    keep = 0
    count = 0
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            break  # a torn last line: written in part when the run died
        line = data[pos:end]
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if data.find(b"\n", end + 1) < 0 and not data[end + 1 :].strip():
                break  # the last line is damaged: redo it
            raise InputError(
                f"{path}:{count + 1}: not a JSON record; remove the file or pass --overwrite"
            ) from None
        if count >= len(rows):
            raise InputError(f"{path} holds more rows than the input; pass --overwrite")
        row = rows[count]
        if not isinstance(obj, dict) or not _same(row.id, obj.get("id")) or not _same(
            row.text, obj.get("text")
        ):
            raise InputError(
                f"{path}:{count + 1}: does not match input row {count + 1} (id or text differ); "
                "remove the file or pass --overwrite"
            )
        for name, value in (expect or {}).items():
            if obj.get(name) != value:
                raise InputError(
                    f"{path}:{count + 1}: made with {name} {obj.get(name)!r}, not {value!r}; "
                    "remove the file or pass --overwrite"
                )
        count += 1
        pos = keep = end + 1
    if keep < len(data):
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
    if n_workers <= 1:
        size = max(1, classifier.batch_size if batch_size is None else batch_size)
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            yield from classifier.classify_batch([(row.id, row.text) for row in chunk])
        return
    pool = ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="surelabel-item")
    window: deque[Future[Record]] = deque()
    it = iter(rows)
    try:
        for row in it:
            window.append(pool.submit(classifier.classify_one, row.text, row.id))
            if len(window) >= 2 * n_workers:
                break
        while window:
            record = window.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                window.append(pool.submit(classifier.classify_one, nxt.text, nxt.id))
            yield record
    finally:
        for fut in window:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
