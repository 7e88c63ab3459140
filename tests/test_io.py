from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from surelabel.errors import InputError
from surelabel.io import JsonlWriter, format_table, read_rows


def write(tmp_path: Path, name: str, content: str) -> Path:
    p = tmp_path / name
    p.write_text(content, encoding="utf-8")
    return p


def test_jsonl_keeps_ids_and_numbers_rows_without(tmp_path: Path) -> None:
    p = write(tmp_path, "in.jsonl", '{"id": "a", "text": "x"}\n\n{"text": "y", "extra": 1}\n')
    rows = read_rows(p)
    assert [(r.id, r.text, r.line) for r in rows] == [("a", "x", 1), (2, "y", 3)]
    assert rows[1].extra == {"extra": 1}


def test_jsonl_bad_line_names_file_and_line(tmp_path: Path) -> None:
    p = write(tmp_path, "in.jsonl", '{"text": "x"}\n{"text": oops}\n')
    with pytest.raises(InputError, match=r"in\.jsonl:2: not valid JSON"):
        read_rows(p)


def test_jsonl_missing_text_field(tmp_path: Path) -> None:
    p = write(tmp_path, "in.jsonl", '{"body": "x"}\n')
    message = r"in\.jsonl:1: no 'text' field \(choose one with --text-field\)"
    with pytest.raises(InputError, match=message):
        read_rows(p)
    assert read_rows(p, text_field="body")[0].text == "x"


def test_csv_with_header(tmp_path: Path) -> None:
    p = write(tmp_path, "in.csv", 'id,text\n7,"hello, world"\n8,\n')
    rows = read_rows(p)
    assert [(r.id, r.text) for r in rows] == [("7", "hello, world"), ("8", "")]
    with pytest.raises(InputError, match=r"in\.csv:1: no 'body' column"):
        read_rows(p, text_field="body")


def test_stdin_plain_lines_and_jsonl() -> None:
    rows = read_rows("-", stdin=io.StringIO("Supreme pizza\n\ncheese pizza\n"))
    assert [(r.id, r.text) for r in rows] == [(1, "Supreme pizza"), (3, "cheese pizza")]
    rows = read_rows(None, stdin=io.StringIO('{"text": "a"}\n'))
    assert rows[0].text == "a"


def test_unreadable_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_rows(tmp_path / "missing.jsonl")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf\xe9\n")
    with pytest.raises(InputError, match="not UTF-8"):
        read_rows(bad)


def test_writer_flushes_complete_lines(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with JsonlWriter(out) as w:
        w.write({"id": 1, "text": "pi\u00f1a"})
        # Readable before close: every line is flushed as it is written.
        assert json.loads(out.read_text(encoding="utf-8")) == {"id": 1, "text": "pi\u00f1a"}
    assert w.count == 1


def test_writer_escapes_lone_surrogates(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with JsonlWriter(out) as w:
        w.write({"text": "\ud800 lone"})
    assert json.loads(out.read_text(encoding="utf-8")) == {"text": "\ud800 lone"}


def test_format_table() -> None:
    table = format_table(
        [
            {"id": 1, "text": "tomato", "label": "fruit", "confidence": 0.5, "decision": "review"},
            {"id": 2, "text": " ", "error": "empty text"},
        ]
    )
    lines = table.splitlines()
    assert lines[0].split() == ["id", "label", "confidence", "decision", "text"]
    assert "0.500" in lines[2] and "error: empty text" in lines[3]
