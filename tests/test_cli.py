"""The command line end to end: real processes, real model, exit codes and messages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
FVH = str(EXAMPLES / "fruit_veg_herb.yaml")
PINE = str(EXAMPLES / "pineapple.yaml")


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "surelabel", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def one_line_error(proc: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_bad_task_file_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "task.yaml"
    bad.write_text("name: t\ninstructions: x\nlabels: [a, a]\n")
    one_line_error(run("classify", str(bad), "-"), 2, "task.yaml", "duplicate label 'a'")
    bad.write_text("name: t\ninstructions: x\nkind: ranking\nlabels: [a, b]\n")
    one_line_error(run("classify", str(bad), "-"), 2, "kind: unknown kind 'ranking'")


def test_bad_flag_exits_2_with_one_line() -> None:
    one_line_error(run("classify", FVH, "--no-such-flag"), 2, "unrecognized arguments")
    one_line_error(run("classify", FVH, "--accept", "0.3", "--clarify", "0.6"), 2, "thresholds")


def test_bad_input_exits_2_naming_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "items.jsonl"
    bad.write_text('{"text": "tomato"}\n{"text": nope}\n')
    one_line_error(run("classify", FVH, str(bad)), 2, "items.jsonl:2", "not valid JSON")
    bad.write_text('{"body": "tomato"}\n')
    one_line_error(run("classify", FVH, str(bad)), 2, "items.jsonl:1", "'text'")
    one_line_error(run("classify", FVH, str(tmp_path / "missing.jsonl")), 2, "no such file")


def test_missing_or_corrupt_model_exits_2(tmp_path: Path) -> None:
    one_line_error(
        run("classify", FVH, "--model", str(tmp_path / "x.gguf"), stdin="tomato\n"), 2, "not found"
    )
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + os.urandom(256))
    proc = run("classify", FVH, "--model", str(corrupt), stdin="tomato\n")
    one_line_error(proc, 2, "corrupt.gguf")


@pytest.mark.model
def test_classify_examples_file_in_order(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    items = EXAMPLES / "fruit_veg_herb_items.jsonl"
    proc = run("classify", FVH, str(items), "-o", str(out), "--no-reason", "-q")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    expected = [json.loads(line)["id"] for line in items.read_text().splitlines()]
    assert [r["id"] for r in records] == expected
    for r in records:
        assert r["label"] in ("fruit", "vegetable", "herb") and r["error"] is None
        assert r["method"] == "exact" and r["model"].startswith("SmolLM2-135M")
        assert abs(sum(r["probabilities"].values()) - 1) < 1e-5
        assert set(r) >= {"id", "text", "label", "confidence", "probabilities", "label_mass",
                          "entropy", "margin", "decision", "reason", "method", "model", "error"}


@pytest.mark.model
def test_stdin_lines_table_and_reason() -> None:
    proc = run("classify", PINE, "--format", "table", stdin="Supreme pizza\n")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["id", "label", "confidence", "decision"]
    assert "Supreme pizza" in lines[2]
    proc = run("classify", PINE, stdin="Supreme pizza\n")
    record = json.loads(proc.stdout)
    assert record["label"] in ("true", "false") and record["reason"]


@pytest.mark.model
def test_csv_input_error_rows_and_thresholds(tmp_path: Path) -> None:
    items = tmp_path / "items.csv"
    items.write_text('id,name\n1,basil\n2,"   "\n3,lemon\n')
    proc = run("classify", FVH, str(items), "--text-field", "name", "--no-reason",
               "--accept", "0.0", "--clarify", "0.0")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["id"] for r in records] == ["1", "2", "3"]
    assert records[1]["error"] == "empty text" and records[1]["label"] is None
    assert records[0]["decision"] == records[2]["decision"] == "accept"


@pytest.mark.model
def test_interrupt_leaves_valid_jsonl(tmp_path: Path) -> None:
    items = tmp_path / "items.txt"
    items.write_text("".join(f"item number {i}\n" for i in range(200)))
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "surelabel", "classify", FVH, str(items), "-o", str(out), "-q"],
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background job inherits SIGINT as ignored, and Python then installs no
        # Ctrl-C handler: give the child the default disposition, as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 300
    while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted after" in err and "Traceback" not in err
    lines = out.read_text().splitlines()
    assert 2 <= len(lines) < 200
    for i, line in enumerate(lines, start=1):
        assert json.loads(line)["id"] == i


# -- formats, columns and the findings of issue 11 (a fake backend: no model) --------------

FAKE = ["--backend", 'fake:{"keywords": {"herb": ["basil"], "fruit": ["apple"]}}', "-q"]


def test_output_format_comes_from_the_extension(tmp_path: Path) -> None:
    items = tmp_path / "items.csv"
    items.write_text("id,text,notes\n1,basil,green\n2,apple,red\n")
    for name in ("out.jsonl", "out.csv", "out.parquet"):
        proc = run("classify", FVH, str(items), "-o", str(tmp_path / name), *FAKE)
        assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["probabilities"]["herb"] > 0.5
    assert json.loads(lines[0])["notes"] == "green"  # input columns pass through
    header = (tmp_path / "out.csv").read_text().splitlines()[0].split(",")
    assert {"p_fruit", "p_vegetable", "p_herb", "notes"} <= set(header)
    assert "probabilities" not in header
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(tmp_path / "out.parquet")
    assert str(table.schema.field("p_herb").type) == "double"
    assert table.column("notes").to_pylist() == ["green", "red"]


def test_keep_columns_can_be_turned_off(tmp_path: Path) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text('{"id": 1, "text": "basil", "meta": {"k": 1}, "label": "herb"}\n')
    kept = json.loads(run("classify", FVH, str(items), *FAKE).stdout)
    assert kept["meta"] == {"k": 1} and kept["input_label"] == "herb"
    plain = json.loads(run("classify", FVH, str(items), "--no-keep-columns", *FAKE).stdout)
    assert "meta" not in plain and "input_label" not in plain


def test_an_unknown_output_extension_is_refused_in_one_line(tmp_path: Path) -> None:
    proc = run("classify", FVH, "-o", str(tmp_path / "out.txt"), *FAKE, stdin="basil\n")
    one_line_error(proc, 2, "out.txt", ".jsonl, .csv or .parquet")
    assert not (tmp_path / "out.txt").exists()
    proc = run("classify", FVH, "--format", "csv", *FAKE, stdin="basil\n")
    assert proc.returncode == 0 and proc.stdout.startswith("id,text,label,confidence,p_fruit")


def test_the_output_may_not_be_the_input_even_through_a_symlink(tmp_path: Path) -> None:
    items = tmp_path / "in.jsonl"
    content = '{"id": 1, "text": "basil"}\n'
    items.write_text(content)
    link = tmp_path / "link.jsonl"
    link.symlink_to(items)
    for out in (items, link):
        proc = run("classify", FVH, str(items), "-o", str(out), "--overwrite", *FAKE)
        one_line_error(proc, 2, "is the input file")
    assert items.read_text() == content


def test_a_parquet_output_is_not_resumed_and_says_so(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    out = tmp_path / "out.parquet"
    assert run("classify", FVH, "-o", str(out), *FAKE, stdin="basil\n").returncode == 0
    proc = run("classify", FVH, "-o", str(out), *FAKE, stdin="basil\n")
    one_line_error(proc, 2, "Parquet file cannot be appended to", "--overwrite")
    assert run("classify", FVH, "-o", str(out), "--overwrite", *FAKE,
               stdin="basil\n").returncode == 0


def test_a_csv_output_resumes_where_it_stopped(tmp_path: Path) -> None:
    items = tmp_path / "items.txt"
    items.write_text("basil\napple\nmint\n")
    out = tmp_path / "out.csv"
    assert run("classify", FVH, str(items), "-o", str(out), *FAKE).returncode == 0
    whole = out.read_text()
    lines = whole.splitlines(keepends=True)
    out.write_text("".join(lines[:3]) + lines[3][:5])  # two rows and a torn third
    proc = run("classify", FVH, str(items), "-o", str(out), "--backend",
               'fake:{"keywords": {"herb": ["basil"], "fruit": ["apple"]}}')
    assert proc.returncode == 0 and "resuming" in proc.stderr and "2 of 3" in proc.stderr
    assert out.read_text() == whole


def _broken_pipe(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command whose reader goes away after the first line (like `| head -1`)."""
    proc = subprocess.Popen([sys.executable, "-m", "surelabel", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    if stdin is not None:
        proc.stdin.write(stdin)
    proc.stdin.close()
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    code = proc.wait(timeout=300)
    return subprocess.CompletedProcess(args, code, first, err)


def test_classify_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    items = tmp_path / "items.txt"
    items.write_text("".join(f"basil {i}\n" for i in range(20000)))
    proc = _broken_pipe("classify", FVH, str(items), *FAKE)
    assert json.loads(proc.stdout)["id"] == 1
    assert proc.returncode == 141 and proc.stderr == ""


def test_export_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    pytest.importorskip("sqlalchemy")
    from surelabel.store import Store

    db = f"sqlite:///{tmp_path / 'items.db'}"
    with Store(db) as store:
        for i in range(3000):
            store.add_item("fruit_veg_herb", {
                "id": f"c{i}", "text": f"basil {i}", "label": "herb", "confidence": 0.7,
                "probabilities": {"herb": 0.7, "fruit": 0.2, "vegetable": 0.1},
                "decision": "review", "method": "exact", "model": "fake", "error": None,
            })
    proc = _broken_pipe("export", "fruit_veg_herb", "--db", db)
    assert json.loads(proc.stdout)["text"].startswith("basil")
    assert proc.returncode == 141 and proc.stderr == ""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("key", ["thresholds", "labels", "examples", "instructions"])
def test_a_yaml_alias_bomb_is_refused_in_one_line_under_any_key(tmp_path: Path, key: str) -> None:
    anchors = ["&a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        anchors.append(f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    bomb = "[" + ", ".join(anchors) + "]"
    fields = {"name": "t", "instructions": "x", "labels": "[a, b]", key: bomb}
    task = tmp_path / "bomb.yaml"
    task.write_text("".join(f"{k}: {v}\n" for k, v in fields.items()))
    proc = run("classify", str(task), "-", stdin="")
    one_line_error(proc, 2, "bomb.yaml", "aliases")
    assert len(proc.stderr) < 300
