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
    assert main(["users", "add", "alice", "--role", "reviewer", "--db", db]) == 0
    password = capsys.readouterr().out.strip().rsplit(" ", 1)[1]
    assert main(["users", "add", "alice", "--db", db]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["tokens", "create", "ingest-bot", "--db", db]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("sl_")
    assert main(["tokens", "list", "--db", db]) == 0
    listing = capsys.readouterr().out
    assert "ingest-bot\tclassify read\tactive" in listing and token not in listing

    with Store(db) as store:
        assert store.authenticate("alice", password) is not None
        tok = store.check_token(token)
        assert tok is not None and tok.scopes == ("classify", "read")
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
    assert main(["export", str(task_file), "--reviewed", "-o", str(out), "--db", db]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["text"], r["label"], r["model_label"]) for r in rows] == [
        ("a", "tomato", "vegetable", "fruit"), ("b", "plum", "fruit", "fruit")]
    assert main(["export", "fruit_veg_herb", "--db", db]) == 0
    everything = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(everything) == 4 and everything[2]["review"]["action"] == "clarify"

    assert main(["tokens", "revoke", "ingest-bot", "--db", db]) == 0
    assert main(["tokens", "revoke", "ingest-bot", "--db", db]) == 2


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
        app = create_app(task, backend, store, settings=Settings(reason=False))
        with TestClient(app) as client:
            items = [{"text": t, "id": t} for t in TRUTH]
            r = client.post(f"/v1/tasks/{task.name}/classify", json={"items": items}, headers=h)
            assert r.status_code == 200, r.text
            for rec in r.json()["items"]:
                answer = client.post(f"/v1/items/{rec['item_id']}/review",
                                     json={"label": TRUTH[rec["text"]]}, headers=h)
                assert answer.status_code == 200, answer.text
    reviewed = tmp_path / "reviewed.jsonl"
    assert main(["export", task.name, "--reviewed", "-o", str(reviewed), "--db", db]) == 0
    assert len(reviewed.read_text().splitlines()) == len(TRUTH)
    cal = tmp_path / "calibration.json"
    assert main(["calibrate", str(task_file), str(reviewed), "-o", str(cal),
                 "--method", "temperature", "--alpha", "0.2", "-q"]) == 0

    calibrations = _calibrations([str(cal)], {task.name: task}, backend.model_name)
    version = calibrations[task.name][1]
    assert version.startswith("temperature-")
    with Store(db) as store:
        app = create_app(task, backend, store,
                         settings=Settings(reason=False, calibrations=calibrations))
        with TestClient(app) as client:
            r = client.post(f"/v1/tasks/{task.name}/classify", json={"text": "pear"}, headers=h)
        rec = r.json()
        assert r.status_code == 200 and rec["calibrated"] is True
        assert rec["calibration"] == version
        assert store.get_item(rec["item_id"]).calibration == version
        assert set(rec["label_set"]) <= set(task.label_names) and rec["label_set"]
        # A calibration fitted on exact distributions is refused for another method.
        with pytest.raises(CalibrationError, match="fitted on 'exact' distributions"):
            create_app(task, backend, store,
                       settings=Settings(method="seed", calibrations=calibrations))
