from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from surelabel.batch import resume_output
from surelabel.errors import InputError, UserError
from surelabel.io import (
    CsvWriter,
    JsonlWriter,
    Row,
    check_not_input,
    flatten_record,
    format_table,
    iter_records,
    merge_columns,
    open_writer,
    output_format,
    read_rows,
    record_columns,
    write_records,
)

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402


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


# -- byte-order marks, Parquet and directories in -----------------------------------------


def test_a_utf8_bom_is_not_part_of_the_first_csv_column(tmp_path: Path) -> None:
    p = tmp_path / "excel.csv"
    p.write_bytes("\ufeffid,text\n7,basil\n".encode())
    rows = read_rows(p)
    assert [(r.id, r.text) for r in rows] == [("7", "basil")]
    p.write_bytes("\ufefftext,id\nbasil,7\n".encode())
    assert [(r.id, r.text) for r in read_rows(p)] == [("7", "basil")]


def test_a_utf8_bom_does_not_break_jsonl_or_stdin(tmp_path: Path) -> None:
    p = tmp_path / "in.jsonl"
    p.write_bytes('\ufeff{"id": "a", "text": "x"}\n'.encode())
    assert [(r.id, r.text) for r in read_rows(p)] == [("a", "x")]
    rows = read_rows("-", stdin=io.StringIO('\ufeff{"text": "y"}\n'))
    assert rows[0].text == "y"


def test_every_other_input_column_is_kept(tmp_path: Path) -> None:
    p = write(tmp_path, "in.csv", "id,name,notes\n1,basil,green\n")
    row = read_rows(p, text_field="name")[0]
    assert (row.id, row.text, dict(row.extra)) == ("1", "basil", {"notes": "green"})
    merged = merge_columns({"id": "1", "text": "basil", "label": "herb"},
                           {"notes": "green", "label": "gold"})
    assert merged == {"id": "1", "text": "basil", "label": "herb", "notes": "green",
                      "input_label": "gold"}


def test_parquet_input_keeps_types_and_numbers_rows_without_ids(tmp_path: Path) -> None:
    p = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "n": [1, 2],
                             "tags": [["x"], []]}), p)
    rows = read_rows(p)
    assert [(r.id, r.text, dict(r.extra)) for r in rows] == [
        (1, "a", {"n": 1, "tags": ["x"]}), (2, "b", {"n": 2, "tags": []})]
    with pytest.raises(InputError, match="no 'body' column"):
        read_rows(p, text_field="body")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match="not a readable Parquet file"):
        read_rows(bad)


def test_a_directory_is_read_file_by_file_in_name_order(tmp_path: Path) -> None:
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    write(d, "a.jsonl", '{"text": "one"}\n{"text": "two"}\n')
    write(d, "b.csv", "text\nthree\n")
    pq.write_table(pa.table({"text": ["four"]}), d / "sub" / "c.parquet")
    write(d, "_SUCCESS", "")
    write(d, ".hidden.jsonl", '{"text": "no"}\n')
    write(d, "README.md", "not data")
    rows = read_rows(d)
    assert [(r.id, r.text) for r in rows] == [(1, "one"), (2, "two"), (3, "three"), (4, "four")]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"no \.jsonl, \.csv or \.parquet files"):
        read_rows(empty)


# -- writers ----------------------------------------------------------------------------

RECORD = {
    "id": 1, "text": "basil", "label": "herb", "confidence": 0.7,
    "probabilities": {"fruit": 0.1, "vegetable": 0.2, "herb": 0.7}, "label_mass": 0.9,
    "entropy": 0.8, "margin": 0.5, "decision": "review", "reason": None, "method": "exact",
    "model": "m", "error": None, "label_set": ["herb", "vegetable"], "notes": "green",
}
ERROR = {"id": 2, "text": " ", "label": None, "confidence": None, "probabilities": None,
         "decision": None, "method": "exact", "model": "m", "error": "empty text"}


def test_the_format_comes_from_the_extension_and_an_unknown_one_is_refused() -> None:
    assert output_format("out.jsonl") == "jsonl"
    assert output_format("out.CSV") == "csv"
    assert output_format("out.parquet") == "parquet"
    assert output_format(None) == "jsonl" and output_format("-") == "jsonl"
    assert output_format("out.txt", "csv") == "csv"
    for bad in ("out.txt", "out"):
        with pytest.raises(UserError) as info:
            output_format(bad)
        assert "\n" not in str(info.value) and ".parquet" in str(info.value)
    with pytest.raises(UserError, match="unknown output format 'xml'"):
        output_format("out.jsonl", "xml")


def test_csv_flattens_probabilities_into_p_label_columns(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    columns = record_columns(["fruit", "vegetable", "herb"])
    assert write_records([ERROR, RECORD], out, columns=columns) == 2
    rows = list(iter_records(out))
    assert list(rows[0])[:7] == ["id", "text", "label", "confidence", "p_fruit",
                                 "p_vegetable", "p_herb"]
    assert rows[1]["p_herb"] == "0.7" and rows[0]["p_herb"] == ""
    assert rows[1]["label_set"] == '["herb", "vegetable"]' and rows[1]["notes"] == "green"
    assert "probabilities" not in rows[0]
    assert flatten_record(RECORD)["p_fruit"] == 0.1


def test_a_csv_header_grows_when_a_later_record_brings_a_column(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    with CsvWriter(out) as w:
        w.write({"id": 1, "text": "a"})
        w.write({"id": 2, "text": "b, c", "extra": True})
        w.write({"id": 3, "text": "d\ne"})
    assert [dict(r) for r in iter_records(out)] == [
        {"id": "1", "text": "a", "extra": ""},
        {"id": "2", "text": "b, c", "extra": "true"},
        {"id": "3", "text": "d\ne", "extra": ""},
    ]


def test_parquet_columns_are_typed(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    columns = record_columns(["fruit", "vegetable", "herb"])
    write_records([ERROR, RECORD], out, columns=columns)
    table = pq.read_table(out)
    types = dict(zip(table.schema.names, map(str, table.schema.types)))
    assert types["id"] == "int64" and types["confidence"] == "double"
    assert types["p_herb"] == "double" and types["label"] == "string"
    assert pa.types.is_list(table.schema.field("label_set").type)
    assert table.schema.field("label_set").type.value_type == pa.string()
    rows = table.to_pylist()
    assert rows[1]["p_herb"] == 0.7 and rows[0]["p_herb"] is None
    assert rows[1]["label_set"] == ["herb", "vegetable"]


def test_parquet_mixed_ids_become_strings_and_free_form_mappings_json(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    write_records([{"id": 1, "text": "a", "meta": {"k": 1}},
                   {"id": "x", "text": "b", "meta": {"other": [1]}}], out)
    rows = pq.read_table(out).to_pylist()
    assert [r["id"] for r in rows] == ["1", "x"]
    assert [json.loads(r["meta"]) for r in rows] == [{"k": 1}, {"other": [1]}]


def test_parquet_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    w = open_writer(out)
    w.write(RECORD)
    assert not out.exists()  # the footer comes at close; the path never holds half a file
    w.close()
    assert pq.read_table(out).num_rows == 1
    with pytest.raises(UserError, match="cannot be appended"):
        open_writer(out, append=True)
    with pytest.raises(UserError, match="needs a file"):
        open_writer(None, "parquet")


def test_a_directory_output_holds_numbered_parts(tmp_path: Path) -> None:
    d = tmp_path / "out"
    records = [{"id": i, "text": f"t{i}"} for i in range(5)]
    with open_writer(f"{d}/", "parquet", rows_per_file=2) as w:
        w.write_all(records)
    assert sorted(p.name for p in d.iterdir()) == [
        "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [r["id"] for r in iter_records(d)] == [0, 1, 2, 3, 4]
    assert [r.id for r in read_rows(d)] == [0, 1, 2, 3, 4]
    assert output_format(d) == "parquet"


def test_an_output_that_is_the_input_is_refused(tmp_path: Path) -> None:
    src = write(tmp_path, "in.jsonl", '{"text": "a"}\n')
    link = tmp_path / "link.jsonl"
    link.symlink_to(src)
    hard = tmp_path / "hard.jsonl"
    hard.hardlink_to(src)
    for out in (src, link, hard):
        with pytest.raises(UserError, match="is the input file"):
            check_not_input(out, [src])
    with pytest.raises(UserError, match="is the input file"):
        check_not_input(src, [link])
    with pytest.raises(UserError, match="inside the input directory"):
        check_not_input(tmp_path / "out.jsonl", [tmp_path])
    with pytest.raises(UserError, match="holds the input"):
        check_not_input(f"{tmp_path}/", [src])
    check_not_input(tmp_path / "other.jsonl", [src])
    check_not_input(None, [src])


# -- resuming each format ---------------------------------------------------------------


def rows(n: int) -> list[Row]:
    return [Row(id=i + 1, text=f"text, {i}\nline", line=i + 1, extra={}) for i in range(n)]


def test_csv_resumes_after_a_torn_row(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    items = rows(4)
    write_records([{"id": r.id, "text": r.text, "method": "exact"} for r in items[:3]], out)
    whole = out.read_bytes()
    out.write_bytes(whole + b'4,"text, 3\n')  # killed inside a quoted cell
    assert resume_output(out, items, {"method": "exact"}) == 3
    assert out.read_bytes() == whole
    out.write_bytes(whole + b"4,tex")  # killed before the newline
    assert resume_output(out, items) == 3 and out.read_bytes() == whole
    with pytest.raises(InputError, match="made with method 'exact', not 'seed'"):
        resume_output(out, items, {"method": "seed"})
    with pytest.raises(InputError, match="does not match input row 1"):
        resume_output(out, [Row(id=9, text="x", line=1, extra={})] * 4)
    with open_writer(out, append=True) as w:
        w.write({"id": 4, "text": items[3].text, "method": "exact"})
    assert [r["id"] for r in iter_records(out)] == ["1", "2", "3", "4"]


def test_a_parquet_file_cannot_be_resumed_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    write_records([{"id": 1, "text": "text, 0\nline"}], out)
    with pytest.raises(InputError, match="Parquet file cannot be appended to"):
        resume_output(out, rows(2))
    assert resume_output(tmp_path / "new.parquet", rows(2)) == 0


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_a_directory_resumes_part_by_part(tmp_path: Path, fmt: str) -> None:
    d = f"{tmp_path}/out/"
    items = rows(5)
    with open_writer(d, fmt, rows_per_file=2) as w:
        w.write_all({"id": r.id, "text": r.text} for r in items[:3])
    assert resume_output(d, items) == 3
    with open_writer(d, fmt, append=True, rows_per_file=2) as w:
        w.write_all({"id": r.id, "text": r.text} for r in items[3:])
    assert [str(r["id"]) for r in iter_records(d)] == ["1", "2", "3", "4", "5"]
    assert resume_output(d, items) == 5
