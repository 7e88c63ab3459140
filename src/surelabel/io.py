"""Reading items (JSONL, CSV, plain lines) and writing records (JSONL, table).

Input is read and checked completely before any model work, so a bad line fails fast with
its file and line number instead of after an hour of classification.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TextIO

from surelabel.errors import InputError


@dataclass(frozen=True)
class Row:
    """One input item: its id (from the input, or its 1-based row number), text and origin."""

    id: Any
    text: Any
    line: int
    extra: Mapping[str, Any]


def read_rows(
    path: str | os.PathLike[str] | None,
    *,
    text_field: str = "text",
    fmt: str | None = None,
    stdin: TextIO | None = None,
) -> list[Row]:
    """Read items from a file, or from stdin when ``path`` is ``None`` or ``"-"``.

    ``fmt`` is ``jsonl``, ``csv`` or ``lines``; by default it comes from the file suffix
    (``.jsonl``/``.json``/``.ndjson``, ``.csv``, anything else: plain lines), and on stdin
    from the content (JSONL if the first non-blank line starts with ``{``).
    """
    if path is None or str(path) == "-":
        name = "<stdin>"
        content = (stdin or sys.stdin).read()
    else:
        name = str(path)
        try:
            content = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise InputError(f"{name}: no such file") from exc
        except UnicodeDecodeError as exc:
            raise InputError(f"{name}: not UTF-8 text (byte {exc.start})") from exc
        except OSError as exc:
            raise InputError(f"{name}: cannot read: {exc.strerror or exc}") from exc
    if fmt is None:
        suffix = Path(name).suffix.lower()
        if suffix in (".jsonl", ".json", ".ndjson"):
            fmt = "jsonl"
        elif suffix == ".csv":
            fmt = "csv"
        elif name == "<stdin>":
            first = next((ln for ln in content.splitlines() if ln.strip()), "")
            fmt = "jsonl" if first.lstrip().startswith("{") else "lines"
        else:
            fmt = "lines"
    if fmt == "jsonl":
        return _read_jsonl(content, name, text_field)
    if fmt == "csv":
        return _read_csv(content, name, text_field)
    if fmt == "lines":
        return [
            Row(id=i, text=line, line=i, extra={})
            for i, line in enumerate(content.splitlines(), start=1)
            if line.strip()
        ]
    raise InputError(f"unknown input format {fmt!r}; expected jsonl, csv or lines")


def _read_jsonl(content: str, name: str, text_field: str) -> list[Row]:
    rows: list[Row] = []
    for lineno, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{name}:{lineno}: not valid JSON ({exc.msg})") from exc
        if not isinstance(obj, dict):
            raise InputError(f"{name}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        if text_field not in obj:
            raise InputError(
                f"{name}:{lineno}: no {text_field!r} field (choose one with --text-field)"
            )
        rows.append(
            Row(
                id=obj.get("id", len(rows) + 1),
                text=obj[text_field],
                line=lineno,
                extra={k: v for k, v in obj.items() if k not in ("id", text_field)},
            )
        )
    return rows


def _read_csv(content: str, name: str, text_field: str) -> list[Row]:
    reader = csv.DictReader(io.StringIO(content, newline=""))
    if reader.fieldnames is None:
        raise InputError(f"{name}:1: empty CSV file (a header row is required)")
    if text_field not in reader.fieldnames:
        raise InputError(
            f"{name}:1: no {text_field!r} column in the header "
            f"({', '.join(reader.fieldnames)}); choose one with --text-field"
        )
    rows: list[Row] = []
    try:
        for rec in reader:
            rows.append(
                Row(
                    id=rec.get("id") or len(rows) + 1,
                    text=rec[text_field] if rec[text_field] is not None else "",
                    line=reader.line_num,
                    extra={k: v for k, v in rec.items() if k not in ("id", text_field)},
                )
            )
    except csv.Error as exc:
        raise InputError(f"{name}:{reader.line_num}: bad CSV ({exc})") from exc
    return rows


class JsonlWriter:
    """Writes one JSON object per line and flushes each, so an interrupted run leaves a
    valid file holding every completed row."""

    def __init__(self, path: str | os.PathLike[str] | None, *, append: bool = False) -> None:
        self.path = path
        self._own = path is not None and str(path) != "-"
        self._fh: IO[str]
        if self._own:
            assert path is not None
            try:
                self._fh = open(path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115
            except OSError as exc:
                raise InputError(f"{path}: cannot write: {exc.strerror or exc}") from exc
        else:
            self._fh = sys.stdout
        self.count = 0

    def write(self, obj: Mapping[str, Any]) -> None:
        line = json.dumps(obj, ensure_ascii=False)
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:
            # Text with lone surrogates (legal in JSON input) cannot be UTF-8: escape it.
            line = json.dumps(obj)
        # One write call per line: an interrupt lands between lines, never inside one.
        self._fh.write(line + "\n")
        self._fh.flush()
        self.count += 1

    def close(self) -> None:
        if self._own:
            self._fh.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def format_table(records: Iterable[Mapping[str, Any]], *, width: int = 40) -> str:
    """A plain-text table of records: id, label(s), confidence, decision, text."""
    rows = []
    for r in records:
        label = r.get("label")
        if r.get("labels") is not None:
            label = ",".join(r["labels"]) or "(none)"
        if r.get("error"):
            label, conf, decision = "-", "-", "error: " + str(r["error"])
        else:
            conf = f"{r['confidence']:.3f}"
            decision = str(r.get("decision"))
        text = str(r.get("text", "")).replace("\n", " ")
        text = text.encode("utf-8", "replace").decode("utf-8")  # lone surrogates
        if len(text) > width:
            text = text[: width - 1] + "…"
        rows.append([str(r.get("id", "")), str(label), conf, decision, text])
    header = ["id", "label", "confidence", "decision", "text"]
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(4)]
    lines = []
    for row in [header, *rows]:
        cells = [row[i].ljust(widths[i]) for i in range(4)] + [row[4]]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 4)
    return "\n".join(lines)
