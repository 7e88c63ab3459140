"""Reading items and writing records: JSONL, CSV, Parquet, directories of them, a table.

Input is read and checked completely before any model work, so a bad line fails fast with
its file and line number instead of after an hour of classification.

Records are written by a :class:`RecordWriter` that :func:`open_writer` chooses from the
path's extension (``.jsonl``, ``.csv``, ``.parquet``; a directory holds numbered parts):

- JSONL keeps each record as ``surelabel classify`` makes it (nested ``probabilities``);
- CSV and Parquet are tables: ``probabilities`` become one ``p_<label>`` column per label
  and a multilabel record's ``decisions`` one ``decision_<label>`` column per label
  (:func:`flatten_record`). Parquet columns are typed (floats, strings, lists of strings);
  CSV cells holding lists or mappings are JSON.

Parquet goes through pyarrow (``pip install 'surelabel[parquet]'``), imported only when a
Parquet file is read or written.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import decimal
import io
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TextIO

from surelabel.errors import InputError, UserError


@dataclass(frozen=True)
class Row:
    """One input item: its id (from the input, or its 1-based row number), text and origin.

    ``extra`` holds the input's other fields or columns, passed through to the output.
    """

    id: Any
    text: Any
    line: int
    extra: Mapping[str, Any]


#: Output formats of :func:`open_writer` (``table`` is the command line's own).
OUTPUT_FORMATS: tuple[str, ...] = ("jsonl", "csv", "parquet")
_SUFFIX_FORMATS = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet", ".pq": "parquet",
}
_FORMAT_SUFFIX = {"jsonl": ".jsonl", "csv": ".csv", "parquet": ".parquet"}


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as exc:
        raise UserError("Parquet needs pyarrow: pip install 'surelabel[parquet]'") from exc
    return pyarrow


# -- reading --------------------------------------------------------------------------


def read_rows(
    path: str | os.PathLike[str] | None,
    *,
    text_field: str = "text",
    fmt: str | None = None,
    stdin: TextIO | None = None,
) -> list[Row]:
    """Read items from a file, a directory of files, or stdin (``path`` ``None`` or ``"-"``).

    ``fmt`` is ``jsonl``, ``csv``, ``parquet`` or ``lines``; by default it comes from the file
    suffix (``.jsonl``/``.json``/``.ndjson``, ``.csv``, ``.parquet``/``.pq``, anything else:
    plain lines), and on stdin from the content (JSONL if the first non-blank line starts
    with ``{``). A directory is read file by file in name order (subfolders included;
    hidden files and files starting with ``_``, such as ``_SUCCESS``, are skipped), each in
    the format of its suffix; rows without an id are numbered across the whole directory.
    A UTF-8 byte-order mark at the start of a file is ignored.
    """
    if path is not None and str(path) != "-" and Path(path).is_dir():
        return _read_directory(Path(path), text_field, fmt)
    return _read_one(path, text_field=text_field, fmt=fmt, stdin=stdin)


def _read_one(
    path: str | os.PathLike[str] | None,
    *,
    text_field: str,
    fmt: str | None,
    stdin: TextIO | None = None,
    first_id: int = 1,
) -> list[Row]:
    name = "<stdin>" if path is None or str(path) == "-" else str(path)
    if fmt is None:
        fmt = "sniff" if name == "<stdin>" else _SUFFIX_FORMATS.get(
            Path(name).suffix.lower(), "lines")
    if fmt == "parquet":
        if name == "<stdin>":
            raise InputError("<stdin>: Parquet input must be a file, not stdin")
        return _read_parquet(Path(name), text_field, first_id)
    if name == "<stdin>":
        content = (stdin or sys.stdin).read().removeprefix("\ufeff")
    else:
        try:
            # utf-8-sig: a byte-order mark (Excel writes one) is not part of the first field.
            content = Path(name).read_text(encoding="utf-8-sig")
        except FileNotFoundError as exc:
            raise InputError(f"{name}: no such file") from exc
        except UnicodeDecodeError as exc:
            raise InputError(f"{name}: not UTF-8 text (byte {exc.start})") from exc
        except OSError as exc:
            raise InputError(f"{name}: cannot read: {exc.strerror or exc}") from exc
    if fmt == "sniff":
        first = next((ln for ln in content.splitlines() if ln.strip()), "")
        fmt = "jsonl" if first.lstrip().startswith("{") else "lines"
    if fmt == "jsonl":
        return _read_jsonl(content, name, text_field, first_id)
    if fmt == "csv":
        return _read_csv(content, name, text_field, first_id)
    if fmt == "lines":
        return [
            Row(id=first_id + i - 1, text=line, line=i, extra={})
            for i, line in enumerate(content.splitlines(), start=1)
            if line.strip()
        ]
    raise InputError(f"unknown input format {fmt!r}; expected jsonl, csv, parquet or lines")


def _data_files(root: Path) -> list[Path]:
    files = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).parts
        if any(part.startswith((".", "_")) for part in rel):
            continue
        if p.is_file() and p.suffix.lower() in _SUFFIX_FORMATS:
            files.append(p)
    return files


def _read_directory(root: Path, text_field: str, fmt: str | None) -> list[Row]:
    files = _data_files(root)
    if not files:
        raise InputError(f"{root}: no .jsonl, .csv or .parquet files in this directory")
    rows: list[Row] = []
    for p in files:
        rows.extend(_read_one(p, text_field=text_field, fmt=fmt, first_id=len(rows) + 1))
    return rows


def _read_jsonl(content: str, name: str, text_field: str, first_id: int = 1) -> list[Row]:
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
        rows.append(_row(obj, text_field, first_id + len(rows), lineno, obj[text_field]))
    return rows


def _row(rec: Mapping[str, Any], text_field: str, number: int, line: int, text: Any) -> Row:
    """A row: every field but ``id`` and the text field is kept in ``extra`` (an empty or
    null id is replaced by the row's number)."""
    return Row(
        id=rec["id"] if "id" in rec and rec["id"] not in ("", None) else number,
        text=text,
        line=line,
        extra={k: v for k, v in rec.items() if k not in ("id", text_field)},
    )


def _read_csv(content: str, name: str, text_field: str, first_id: int = 1) -> list[Row]:
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
            text = rec[text_field] if rec[text_field] is not None else ""
            rows.append(_row(rec, text_field, first_id + len(rows), reader.line_num, text))
    except csv.Error as exc:
        raise InputError(f"{name}:{reader.line_num}: bad CSV ({exc})") from exc
    return rows


def _read_parquet(path: Path, text_field: str, first_id: int = 1) -> list[Row]:
    pa = _pyarrow()
    try:
        pf = pa.parquet.ParquetFile(path)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file") from exc
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from exc
    names = pf.schema_arrow.names
    if text_field not in names:
        raise InputError(
            f"{path}: no {text_field!r} column ({', '.join(names)}); choose one with --text-field"
        )
    rows: list[Row] = []
    try:
        for batch in pf.iter_batches():
            for rec in batch.to_pylist():
                text = rec[text_field]
                rows.append(_row(rec, text_field, first_id + len(rows), len(rows) + 1, text))
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from exc
    return rows


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# -- record shape: passing input columns through, flattening for tables ----------------------

#: Fields of ``Record.to_dict()`` (and the table columns they become), in output order.
RECORD_FIELDS: tuple[str, ...] = (
    "id", "text", "label", "confidence", "probabilities", "label_mass", "entropy", "margin",
    "decision", "reason", "method", "model", "error", "labels", "decisions", "warning",
)


def merge_columns(
    record: Mapping[str, Any], extra: Mapping[str, Any], *, prefix: str = "input_"
) -> dict[str, Any]:
    """A record with the input's other columns passed through after its own fields.

    An input column whose name the record already uses (a labelled file's ``label``) is
    kept as ``input_<name>``, so neither value is lost.
    """
    out = dict(record)
    for key, value in extra.items():
        name = key
        while name in out:
            name = prefix + name
        out[name] = value
    return out


def flatten_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record as one table row: ``probabilities`` -> ``p_<label>`` columns, a multilabel
    record's ``decisions`` -> ``decision_<label>`` columns, in their place."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if key == "probabilities" and (value is None or isinstance(value, Mapping)):
            for label, p in (value or {}).items():
                out[f"p_{label}"] = p
        elif key == "decisions" and (value is None or isinstance(value, Mapping)):
            for label, d in (value or {}).items():
                out[f"decision_{label}"] = d
        else:
            out[key] = value
    return out


def record_columns(
    labels: Sequence[str], *, multilabel: bool = False, extra: Sequence[str] = ()
) -> list[str]:
    """The table columns of a task's records, in order: the record's fields with one
    ``p_<label>`` (and, for multilabel, ``decision_<label>``) column per label, then
    ``extra`` (passed-through input columns). Columns that only some records have (a
    method's details, ``calibrated``) are added by the writers as they appear."""
    cols: list[str] = []
    for name in RECORD_FIELDS:
        if name == "probabilities":
            cols.extend(f"p_{label}" for label in labels)
        elif name == "decisions":
            if multilabel:
                cols.extend(f"decision_{label}" for label in labels)
        elif name == "labels":
            if multilabel:
                cols.append(name)
        else:
            cols.append(name)
    return [*cols, *(c for c in extra if c not in cols)]


def _json_default(value: Any) -> Any:
    """JSON for the values a Parquet or pandas input can hold beyond JSON's own."""
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return item()
    tolist = getattr(value, "tolist", None)  # numpy arrays
    if callable(tolist):
        return tolist()
    isoformat = getattr(value, "isoformat", None)  # pandas.Timestamp
    if callable(isoformat):
        return isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _utf8(text: str) -> str:
    """``text`` with lone surrogates (legal in JSON input, not in UTF-8) escaped."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _finite(value: Any) -> Any:
    """NaN and infinities (missing values of pandas/Parquet inputs) as ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def to_json(obj: Any) -> str:
    """One record as a JSON line (UTF-8 safe, no NaN)."""
    try:
        line = json.dumps(obj, ensure_ascii=False, allow_nan=False, default=_json_default)
    except ValueError:
        line = json.dumps(_finite(obj), ensure_ascii=False, default=_json_default)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        # Text with lone surrogates (legal in JSON input) cannot be UTF-8: escape it.
        line = json.dumps(_finite(obj), default=_json_default)
    return line


# -- writing --------------------------------------------------------------------------


def check_not_input(
    output: str | os.PathLike[str] | None, inputs: Iterable[str | os.PathLike[str] | None]
) -> None:
    """Refuse (one-line :class:`~surelabel.errors.UserError`) an output that is one of the
    inputs (also through a symlink or a hard link), lies inside an input directory, or is a
    directory holding an input: writing it would destroy the input."""
    if output is None or str(output) == "-":
        return
    out = Path(os.path.realpath(output))
    for given in inputs:
        if given is None or str(given) == "-":
            continue
        src = Path(os.path.realpath(given))
        same = out == src
        if not same and out.exists() and src.exists():
            try:
                same = os.path.samefile(out, src)
            except OSError:
                same = False
        if same:
            raise UserError(f"{output} is the input file {given}; write the output elsewhere")
        if src.is_dir() and src in out.parents:
            raise UserError(f"{output} is inside the input directory {given}; write the "
                            "output elsewhere")
        if out in src.parents:
            raise UserError(f"{output} holds the input {given}; write the output elsewhere")


def output_format(path: str | os.PathLike[str] | None, fmt: str | None = None) -> str:
    """The format records go to ``path`` in: ``fmt`` when given, else from the extension
    (stdout: ``jsonl``; a directory: ``jsonl``, or the format of the parts it holds).

    Raises :class:`~surelabel.errors.UserError` (one line) for an unknown format or
    extension.
    """
    if fmt is not None:
        if fmt not in OUTPUT_FORMATS:
            raise UserError(f"unknown output format {fmt!r}; expected one of "
                            f"{', '.join(OUTPUT_FORMATS)}")
        return fmt
    if path is None or str(path) == "-":
        return "jsonl"
    if is_directory_output(path):
        found = {_SUFFIX_FORMATS[p.suffix.lower()] for p in _parts(Path(path))}
        if len(found) > 1:
            raise UserError(f"{path}: holds parts of several formats; give --format")
        return found.pop() if found else "jsonl"
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIX_FORMATS:
        what = repr(suffix) if suffix else "a name without an extension"
        raise UserError(
            f"{path}: cannot tell the output format from {what}; use .jsonl, .csv or "
            ".parquet, end the path with / for a directory, or give --format"
        )
    return _SUFFIX_FORMATS[suffix]


def is_directory_output(path: str | os.PathLike[str] | None) -> bool:
    """Whether records to ``path`` go into a directory of parts: an existing directory, or a
    path ending with ``/``."""
    if path is None or str(path) == "-":
        return False
    text = os.fspath(path)
    return text.endswith(("/", os.sep)) or Path(text).is_dir()


_PART_RE = re.compile(r"^part-(\d{5,})\.(jsonl|csv|parquet)$")


def _parts(root: Path) -> list[Path]:
    """The parts of a directory output, in order."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _PART_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def part_paths(path: str | os.PathLike[str]) -> list[Path]:
    """The parts (``part-00000.jsonl``, ...) a directory output holds, in order."""
    return _parts(Path(path))


class RecordWriter:
    """Writes records (``Record`` objects or mappings) to one destination.

    ``count`` is the number written by this writer. Use as a context manager, or call
    :meth:`close`: a Parquet file is only complete once closed.
    """

    fmt: str = ""

    def __init__(self) -> None:
        self.count = 0

    def write(self, record: Any) -> None:
        self._write(_as_mapping(record))
        self.count += 1

    def write_all(self, records: Iterable[Any]) -> int:
        """Write every record; returns how many."""
        n = 0
        for record in records:
            self.write(record)
            n += 1
        return n

    def _write(self, record: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Finish the output (flush, write a Parquet footer, close the file)."""

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_mapping(record: Any) -> Mapping[str, Any]:
    if isinstance(record, Mapping):
        return record
    to_dict = getattr(record, "to_dict", None)
    if callable(to_dict):
        out = to_dict()
        if isinstance(out, Mapping):
            return out
    raise TypeError(f"cannot write a {type(record).__name__} as a record (a mapping or an "
                    "object with to_dict() is needed)")


def _open_text(path: str | os.PathLike[str], mode: str) -> IO[str]:
    try:
        return open(path, mode, encoding="utf-8", newline="")
    except OSError as exc:
        raise InputError(f"{path}: cannot write: {exc.strerror or exc}") from exc


class JsonlWriter(RecordWriter):
    """Writes one JSON object per line and flushes each, so an interrupted run leaves a
    valid file holding every completed row."""

    fmt = "jsonl"

    def __init__(self, path: str | os.PathLike[str] | None, *, append: bool = False) -> None:
        super().__init__()
        self.path = path
        self._own = path is not None and str(path) != "-"
        self._fh: IO[str] = (
            _open_text(path, "a" if append else "w") if path is not None and self._own
            else sys.stdout
        )

    def _write(self, record: Mapping[str, Any]) -> None:
        # One write call per line: an interrupt lands between lines, never inside one.
        self._fh.write(to_json(record) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._own:
            self._fh.close()

    def __enter__(self) -> JsonlWriter:
        return self


def csv_cell(value: Any) -> str:
    """A value as a CSV cell: empty for ``None``, ``true``/``false``, numbers as Python
    writes them, lists and mappings as JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if not math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return _utf8(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple, Mapping)):
        return to_json(value)
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    plain = _json_default(value)
    return plain if isinstance(plain, str) else csv_cell(plain)


class CsvWriter(RecordWriter):
    """Writes records as CSV rows (:func:`flatten_record`), one flushed line each.

    ``columns`` is the header to start from (the order of columns); a record bringing a
    column that is not in it adds the column at the end. In a file the header then grows
    (the rows so far are rewritten once, with empty cells); on stdout, where written lines
    cannot change, such columns are left out and listed in ``dropped``.
    """

    fmt = "csv"

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        *,
        append: bool = False,
        columns: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.path = path
        self._own = path is not None and str(path) != "-"
        self.columns: list[str] = list(dict.fromkeys(columns or ()))
        self.dropped: set[str] = set()
        self._header_written = False
        if path is not None and self._own:
            existing = _csv_header(Path(path)) if append else None
            if existing:
                self.columns = existing + [c for c in self.columns if c not in existing]
                self._header_written = True
                if len(self.columns) > len(existing):
                    self._rewrite(existing)
            self._fh: IO[str] = _open_text(path, "a" if self._header_written else "w")
        else:
            self._fh = sys.stdout

    def _line(self, cells: Sequence[str]) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(cells)
        return buf.getvalue()

    def _write(self, record: Mapping[str, Any]) -> None:
        flat = flatten_record(record)
        new = [k for k in flat if k not in self.columns]
        if new:
            if not self._header_written:
                self.columns.extend(new)
            elif self._own:
                old = list(self.columns)
                self.columns.extend(new)
                self._fh.close()
                self._rewrite(old)
                assert self.path is not None
                self._fh = _open_text(self.path, "a")
            else:
                self.dropped.update(new)
        if not self._header_written:
            self._fh.write(self._line(self.columns))
            self._header_written = True
        # One write call per row, flushed: an interrupt lands between rows.
        self._fh.write(self._line([csv_cell(flat.get(c)) for c in self.columns]))
        self._fh.flush()

    def _rewrite(self, old: list[str]) -> None:
        """Rewrite the file under the grown header (new cells empty), atomically."""
        assert self.path is not None
        path = Path(self.path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(path, encoding="utf-8", newline="") as src, _open_text(tmp, "w") as dst:
            reader = csv.reader(src)
            next(reader, None)
            dst.write(self._line(self.columns))
            pad = [""] * (len(self.columns) - len(old))
            for cells in reader:
                dst.write(self._line(cells + pad))
        os.replace(tmp, path)

    def close(self) -> None:
        if self._own:
            if not self._header_written and self.columns:
                self._fh.write(self._line(self.columns))
                self._header_written = True
            self._fh.close()
        else:
            self._fh.flush()


def _csv_header(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    with open(path, encoding="utf-8-sig", newline="") as fh:
        return next(csv.reader(fh), None)


#: Parquet types of the record fields; ``p_<label>`` columns are float64 and
#: ``decision_<label>`` columns strings. Other columns' types come from their values.
_FIELD_TYPES = {
    "text": "string", "label": "string", "confidence": "float64", "label_mass": "float64",
    "entropy": "float64", "margin": "float64", "decision": "string", "reason": "string",
    "method": "string", "model": "string", "error": "string", "warning": "string",
    "labels": "list<string>", "label_set": "list<string>", "calibrated": "bool",
    "raw_confidence": "float64", "calibration": "string", "confidence_source": "string",
    "shortlist": "int64", "labels_scored": "int64", "cut_mass": "float64", "cut_bound": "float64",
}


def _arrow_type(pa: Any, name: str) -> Any:
    kind = _FIELD_TYPES.get(name)
    if kind is None and name.startswith("p_"):
        kind = "float64"
    if kind is None and name.startswith("decision_"):
        kind = "string"
    if kind is None:
        return None
    if kind == "list<string>":
        return pa.list_(pa.string())
    return getattr(pa, kind)() if kind != "bool" else pa.bool_()


def _is_nested(pa: Any, t: Any) -> bool:
    if pa.types.is_struct(t) or pa.types.is_map(t) or pa.types.is_union(t):
        return True
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return bool(_is_nested(pa, t.value_type))
    return False


def _arrow_column(pa: Any, name: str, values: list[Any]) -> Any:
    """A typed column: the field's own type, else pyarrow's inference; mixed scalars become
    strings and free-form mappings JSON text, so any set of records can be written."""
    known = _arrow_type(pa, name)
    values = [_utf8(v) if isinstance(v, str) else _finite(v) for v in values]
    if known is not None:
        try:
            return pa.array(values, type=known)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
            pass
    try:
        arr = pa.array(values)
        if not _is_nested(pa, arr.type):
            return arr
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError,
            ValueError, OverflowError):
        pass
    scalar = all(v is None or isinstance(v, (str, int, float, bool)) for v in values)
    return pa.array([None if v is None else (str(v) if scalar else to_json(v))
                     for v in values], type=pa.string())


def records_table(records: Iterable[Any], columns: Sequence[str] = ()) -> Any:
    """Records as a typed ``pyarrow.Table`` (flattened as for CSV; ``columns`` first, in
    order, then any other column in order of appearance)."""
    pa = _pyarrow()
    flat = [flatten_record(_as_mapping(r)) for r in records]
    names = list(dict.fromkeys(columns))
    seen = set(names)
    for row in flat:
        for key in row:
            if key not in seen:
                seen.add(key)
                names.append(key)
    arrays = [_arrow_column(pa, n, [row.get(n) for row in flat]) for n in names]
    return pa.Table.from_arrays(arrays, names=names)


class ParquetWriter(RecordWriter):
    """Writes records to a Parquet file with typed columns.

    A Parquet file cannot be appended to and is only readable once its footer is written,
    so the records are kept until :meth:`close`, then written to a temporary file that is
    renamed into place: the path never holds a half-written file. (For outputs too large
    for memory, write a directory of parts, or use the Ray engine.)
    """

    fmt = "parquet"

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        *,
        append: bool = False,
        columns: Sequence[str] | None = None,
        row_group_size: int = 65_536,
    ) -> None:
        super().__init__()
        if path is None or str(path) == "-":
            raise UserError("Parquet output needs a file: -o out.parquet")
        if append:
            raise UserError(f"{path}: a Parquet file cannot be appended to")
        _pyarrow()
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise InputError(f"{path}: cannot write: no such directory {self.path.parent}")
        self.columns = list(columns or ())
        self.row_group_size = row_group_size
        self._rows: list[Mapping[str, Any]] = []
        self._closed = False

    def _write(self, record: Mapping[str, Any]) -> None:
        self._rows.append(dict(record))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        pa = _pyarrow()
        table = records_table(self._rows, self.columns)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        try:
            pa.parquet.write_table(table, tmp, row_group_size=self.row_group_size)
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise InputError(f"{self.path}: cannot write: {exc.strerror or exc}") from exc
        self._rows = []


class DirectoryWriter(RecordWriter):
    """Writes records into numbered parts, ``part-00000.<ext>``, ``rows_per_file`` each.

    With ``append``, a JSONL or CSV directory goes on in its last part; a Parquet directory
    starts a new part (its earlier parts are complete files, so a killed run loses at most
    the part it was writing).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fmt: str,
        *,
        append: bool = False,
        columns: Sequence[str] | None = None,
        rows_per_file: int = 10_000,
    ) -> None:
        super().__init__()
        if rows_per_file < 1:
            raise UserError("rows per file must be at least 1")
        self.fmt = fmt
        self.root = Path(path)
        self.columns = list(columns or ())
        self.rows_per_file = rows_per_file
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{path}: cannot create the directory: {exc.strerror or exc}") from exc
        parts = _parts(self.root)
        if not append:
            for p in parts:
                p.unlink()
            parts = []
        self._index = len(parts)
        self._current: RecordWriter | None = None
        self._in_part = 0
        if parts and fmt in ("jsonl", "csv"):
            last = parts[-1]
            self._in_part = _count_rows(last)
            if self._in_part < rows_per_file:
                self._current = _file_writer(last, fmt, append=True, columns=self.columns)
            else:
                self._in_part = 0

    def _write(self, record: Mapping[str, Any]) -> None:
        if self._current is None or self._in_part >= self.rows_per_file:
            if self._current is not None:
                self._current.close()
            part = self.root / f"part-{self._index:05d}{_FORMAT_SUFFIX[self.fmt]}"
            self._index += 1
            self._current = _file_writer(part, self.fmt, append=False, columns=self.columns)
            self._in_part = 0
        self._current.write(record)
        self._in_part += 1

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None


def _count_rows(path: Path) -> int:
    if path.suffix == ".jsonl":
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    with open(path, encoding="utf-8", newline="") as fh:
        return max(0, sum(1 for _ in csv.reader(fh)) - 1)


def _file_writer(
    path: str | os.PathLike[str] | None, fmt: str, *, append: bool, columns: Sequence[str] | None
) -> RecordWriter:
    if fmt == "jsonl":
        return JsonlWriter(path, append=append)
    if fmt == "csv":
        return CsvWriter(path, append=append, columns=columns)
    if fmt == "parquet":
        return ParquetWriter(path, append=append, columns=columns)
    raise UserError(f"unknown output format {fmt!r}; expected one of {', '.join(OUTPUT_FORMATS)}")


def open_writer(
    path: str | os.PathLike[str] | None,
    fmt: str | None = None,
    *,
    append: bool = False,
    columns: Sequence[str] | None = None,
    rows_per_file: int = 10_000,
) -> RecordWriter:
    """A writer for records to ``path`` (``None`` or ``"-"``: stdout).

    ``fmt`` (``jsonl``, ``csv``, ``parquet``) defaults to the format of the extension
    (:func:`output_format`); an unknown extension is refused with a one-line
    :class:`~surelabel.errors.UserError`. A path ending with ``/`` (or an existing
    directory) gets numbered parts of ``rows_per_file`` records. ``append`` goes on after
    what a JSONL or CSV output holds (Parquet files cannot be appended to). ``columns``
    orders a table's columns (:func:`record_columns`); others are added as they appear.
    """
    chosen = output_format(path, fmt)
    if path is not None and is_directory_output(path):
        return DirectoryWriter(path, chosen, append=append, columns=columns,
                               rows_per_file=rows_per_file)
    return _file_writer(path, chosen, append=append, columns=columns)


def write_records(
    records: Iterable[Any],
    path: str | os.PathLike[str] | None,
    fmt: str | None = None,
    *,
    columns: Sequence[str] | None = None,
) -> int:
    """Write records to ``path`` in one go (see :func:`open_writer`); returns how many."""
    with open_writer(path, fmt, columns=columns) as writer:
        return writer.write_all(records)


def iter_records(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The rows of a record file or directory as written (tables as flat rows, with CSV
    cells as strings)."""
    p = Path(path)
    files = (_parts(p) or _data_files(p)) if p.is_dir() else [p]
    for f in files:
        fmt = _SUFFIX_FORMATS.get(f.suffix.lower())
        if fmt == "parquet":
            pa = _pyarrow()
            for batch in pa.parquet.ParquetFile(f).iter_batches():
                yield from batch.to_pylist()
        elif fmt == "csv":
            with open(f, encoding="utf-8-sig", newline="") as fh:
                yield from csv.DictReader(fh)
        else:
            with open(f, encoding="utf-8-sig") as fh:
                for line in fh:
                    if line.strip():
                        yield json.loads(line)


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
