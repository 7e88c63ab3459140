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
