"""`surelabel users / tokens / export` in process, and `surelabel serve` as a real process
(uvicorn on 127.0.0.1 with the embedded model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from service_support import cli
from support import free_port
from surelabel.cli import main
from surelabel.errors import CalibrationError
from surelabel.store import Store

REPO = Path(__file__).resolve().parents[1]


def test_building_the_parser_does_not_import_sqlalchemy() -> None:
    """The CLI offers the store's roles and scopes as choices without loading the store."""
    code = ("import sys; from surelabel.cli import build_parser; build_parser(); "
            "assert 'sqlalchemy' not in sys.modules, 'building the parser imported sqlalchemy'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_users_tokens_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    assert cli("users", "add", "alice", "--role", "reviewer", "--db", db) == 0
    out = capsys.readouterr().out
    password = out.strip().rsplit(" ", 1)[1]
    assert "one-time password" in out and "every task" in out
    assert cli("users", "add", "alice", "--db", db) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli("users", "add", "judge", "--role", "adjudicator", "--task", "fruit_veg_herb",
               "--quota", "40", "--db", db) == 0
    capsys.readouterr()
    assert cli("tokens", "create", "ingest-bot", "--db", db) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("sl_")
    assert cli("tokens", "create", "veg-bot", "--task", "fruit_veg_herb", "--scope", "review",
               "--db", db) == 0
    capsys.readouterr()
    assert cli("tokens", "list", "--db", db) == 0
    listing = capsys.readouterr().out
    assert "ingest-bot\tclassify read\tactive" in listing and token not in listing
    assert "veg-bot\treview\tactive" in listing and listing.rstrip().endswith("fruit_veg_herb")

    with Store(db) as store:
        assert store.authenticate("alice", password) is not None
        assert store.get_user("alice").must_change_password
        judge = store.get_user("judge")
        assert judge.can_adjudicate("fruit_veg_herb") and not judge.can_review("other")
        assert judge.quota("fruit_veg_herb") == 40
        tok = store.check_token(token)
        assert tok is not None and tok.scopes == ("classify", "read") and tok.task is None
        rec = {"text": "tomato", "label": "fruit", "confidence": 0.6, "decision": "review",
               "probabilities": {"fruit": 0.6, "vegetable": 0.4}, "error": None}
        a, _ = store.add_item("fruit_veg_herb", {**rec, "id": "a"})
        b, _ = store.add_item("fruit_veg_herb", {**rec, "id": "b", "text": "plum"})
        c, _ = store.add_item("fruit_veg_herb", {**rec, "id": "c", "text": "??"})
        store.add_item("fruit_veg_herb", {**rec, "id": "d", "text": "open one"})
        store.answer(a.id, "alice", label="vegetable")
        store.answer(b.id, "alice", label="fruit")
        store.answer(c.id, "alice", clarify=True, note="unclear")

    out = tmp_path / "reviewed.jsonl"
    task_file = REPO / "examples" / "fruit_veg_herb.yaml"
    assert cli("export", str(task_file), "--reviewed", "-o", str(out), "--db", db) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["text"], r["label"], r["model_label"]) for r in rows] == [
        ("a", "tomato", "vegetable", "fruit"), ("b", "plum", "fruit", "fruit")]
    assert rows[0]["settled_by"] == "agreement" and rows[0]["reviewed_at"].endswith("+00:00")
    assert cli("export", "fruit_veg_herb", "--db", db) == 0
    everything = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(everything) == 4 and everything[2]["review"]["action"] == "clarify"
    # The format follows the extension: CSV and Parquet are tables, never JSONL in disguise.
    table = tmp_path / "items.csv"
    assert cli("export", "fruit_veg_herb", "-o", str(table), "--db", db) == 0
    import csv

    with open(table, newline="", encoding="utf-8") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert len(csv_rows) == 4 and "p_fruit" in csv_rows[0] and not table.read_text().startswith("{")
    pq_path = tmp_path / "reviewed.parquet"
    assert cli("export", "fruit_veg_herb", "--reviewed", "-o", str(pq_path), "--db", db) == 0
    import pyarrow.parquet as pq

    assert pq.read_table(pq_path).column("label").to_pylist() == ["vegetable", "fruit"]
    assert pq_path.read_bytes()[:4] == b"PAR1"
    capsys.readouterr()
    assert cli("export", "fruit_veg_herb", "-o", str(tmp_path / "items.xlsx"), "--db", db) == 2
    assert "cannot tell the output format" in capsys.readouterr().err
    assert cli("export", "fruit_veg_herb", "--format", "parquet", "--db", db) == 2

    assert cli("users", "grant", "alice", "fruit_veg_herb", "--role", "adjudicator",
               "--db", db) == 0
    assert cli("users", "disable", "alice", "--db", db) == 0
    assert cli("users", "list", "--db", db) == 0
    listing = capsys.readouterr().out
    assert "alice\treviewer\t*:reviewer, fruit_veg_herb:adjudicator\tdisabled" in listing
    assert "judge\treviewer\tfruit_veg_herb:adjudicator/40\tone-time password" in listing
    assert cli("users", "revoke", "alice", "nope", "--db", db) == 2
    assert cli("users", "reset-password", "nobody", "--db", db) == 2
    assert cli("tokens", "revoke", "ingest-bot", "--db", db) == 0
    assert cli("tokens", "revoke", "ingest-bot", "--db", db) == 2


def test_calibrations_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path / 'cal.db'}"
    data = {"format": "surelabel-calibration", "version": 1, "n_fitted": 30}
    with Store(db) as store:
        store.add_calibration("t", data, source="refit", actor="test", method="temperature",
                              n_fitted=30, heldout_ece=0.041, raw_ece=0.2)
        store.add_calibration("t", {**data, "n_fitted": 60}, source="refit", actor="test",
                              method="platt", n_fitted=60, heldout_ece=0.03)
    assert cli("calibrations", "list", "t", "--db", db) == 0
    out = capsys.readouterr().out
    assert "*2\t" in out and " 1\t" in out and "0.041\t0.200" in out
    assert cli("calibrations", "rollback", "t", "--db", db) == 0
    assert "version 1 is active" in capsys.readouterr().out
    assert cli("calibrations", "activate", "t", "none", "--db", db) == 0
    assert cli("calibrations", "rollback", "t", "--db", db) == 1  # nothing to roll back
    assert "no active calibration" in capsys.readouterr().err
    assert cli("calibrations", "activate", "t", "7", "--db", db) == 2
    assert cli("calibrations", "activate", "t", "two", "--db", db) == 2
    target = tmp_path / "v2.json"
    assert cli("calibrations", "export", "t", "2", "-o", str(target), "--db", db) == 0
    assert json.loads(target.read_text())["n_fitted"] == 60
    assert cli("calibrations", "list", "nothing", "--db", db) == 0
    assert "no calibration versions" in capsys.readouterr().out


@pytest.mark.model
def test_serve_process_with_embedded_model(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'serve.db'}"
    with Store(db) as store:
        token = store.create_token("bot", ["classify", "read"])
    port = free_port()
    exe = [sys.executable, "-c", "from surelabel.cli import entry; entry()"]
    proc = subprocess.Popen(
        [*exe, "serve", str(REPO / "examples" / "fruit_veg_herb.yaml"), "--db", db,
         "--port", str(port), "--no-reason", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{base}/openapi.json", timeout=1)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    msg = proc.stderr.read() if proc.stderr else "no output"
                    raise AssertionError(msg) from None
                time.sleep(0.2)
        h = {"Authorization": f"Bearer {token}"}
        r = httpx.post(f"{base}/v1/tasks/fruit_veg_herb/classify",
                       json={"text": "basil", "id": "b-1"}, headers=h, timeout=60)
        assert r.status_code == 200, r.text
        rec = r.json()
        assert rec["label"] in ("fruit", "vegetable", "herb") and rec["method"] == "exact"
        assert abs(sum(rec["probabilities"].values()) - 1) < 1e-4
        again = httpx.post(f"{base}/v1/tasks/fruit_veg_herb/classify",
                           json={"text": "basil", "id": "b-1"}, headers=h, timeout=60)
        assert again.json()["item_id"] == rec["item_id"]
        assert httpx.get(f"{base}/v1/tasks", timeout=5).status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "serving fruit_veg_herb" in (proc.stderr.read() if proc.stderr else "")


TRUTH = {
    "tomato": "vegetable", "cucumber": "vegetable", "lemon": "fruit", "basil": "herb",
    "apple": "fruit", "carrot": "vegetable", "mint": "herb", "strawberry": "fruit",
    "spinach": "vegetable", "parsley": "herb", "banana": "fruit", "thyme": "herb",
}


@pytest.mark.model
def test_reviewed_labels_flow_into_calibration(backend: Any, tmp_path: Path) -> None:
    """serve → review → export --reviewed → calibrate → serve --calibration."""
    from fastapi.testclient import TestClient

    from surelabel.cli.serve import _calibrations
    from surelabel.server import Settings, create_app
    from surelabel.task import load_task

    task_file = REPO / "examples" / "fruit_veg_herb.yaml"
    task = load_task(task_file)
    db = f"sqlite:///{tmp_path / 'flow.db'}"
    with Store(db) as store:
        token = store.create_token("bot", ["classify", "review"])
        h = {"Authorization": f"Bearer {token}"}
        app = create_app(task, backend, store, settings=Settings(reason=False, audit_seed=0))
        with TestClient(app) as client:
            items = [{"text": t, "id": t} for t in TRUTH]
            r = client.post(f"/v1/tasks/{task.name}/classify", json={"items": items}, headers=h)
            assert r.status_code == 200, r.text
            for rec in r.json()["items"]:
                answer = client.post(f"/v1/items/{rec['item_id']}/review",
                                     json={"label": TRUTH[rec["text"]]}, headers=h)
                assert answer.status_code == 200, answer.text
    reviewed = tmp_path / "reviewed.jsonl"
    assert cli("export", task.name, "--reviewed", "-o", str(reviewed), "--db", db) == 0
    assert len(reviewed.read_text().splitlines()) == len(TRUTH)
    cal = tmp_path / "calibration.json"
    assert main(["calibrate", str(task_file), str(reviewed), "-o", str(cal),
                 "--method", "temperature", "--alpha", "0.2", "-q"]) == 0

    calibrations = _calibrations([str(cal)], {task.name: task}, backend.model_name)
    assert calibrations[task.name][1].startswith("temperature-")
    with Store(db) as store:
        app = create_app(task, backend, store,
                         settings=Settings(reason=False, calibrations=calibrations))
        with TestClient(app) as client:
            r = client.post(f"/v1/tasks/{task.name}/classify", json={"text": "pear"}, headers=h)
        rec = r.json()
        # The file was stored as the task's first calibration version, and applied.
        assert r.status_code == 200 and rec["calibrated"] is True
        assert rec["calibration_version"] == 1 and rec["calibration"] == "task"
        assert store.get_item(rec["item_id"]).calibration == "1"
        assert store.list_calibrations(task.name)[0].source == "file"
        assert set(rec["label_set"]) <= set(task.label_names) and rec["label_set"]
        # A calibration fitted on exact distributions is refused for another method.
        with pytest.raises(CalibrationError, match="fitted on 'exact' distributions"):
            create_app(task, backend, store,
                       settings=Settings(method="seed", calibrations=calibrations))
