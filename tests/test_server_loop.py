"""The review loop that calibrates itself, end to end against a real server (uvicorn on
127.0.0.1), on SQLite and on a real PostgreSQL.

Rows of a shared set (``../shared/data/sst2_dev.jsonl``) are posted through the API; API
reviewers answer them with the set's gold labels; after ``refit_every`` settled items the
server fits a calibration from the reviewed audit sample, stores it as version 1 and
applies it to new items; rollback (by the API and by the command line) goes back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service_support import (
    NEGATIVE,
    POSITIVE,
    REPO,
    LiveServer,
    bearer,
    cli,
    database,
    service_settings,
)
from surelabel.server import create_app
from surelabel.store import Store
from surelabel.task import Task, load_task
from surelabel.testing import FakeBackend


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database(request.param, tmp_path, "loop") as url:
        yield url


def sst2_rows(data_dir: Path, n: int, skip: int = 0) -> list[dict[str, Any]]:
    lines = (data_dir / "sst2_dev.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(x) for x in lines[skip:skip + n]]


def wait_for(check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_refit_from_reviews_applies_to_new_items_and_rolls_back(
    db: str, data_dir: Path
) -> None:
    task: Task = load_task(REPO / "bench" / "tasks" / "sst2.yaml")
    # Keyword scores plus noise: confident, and often wrong (a model that needs calibration).
    fake = FakeBackend(keywords={"positive": POSITIVE, "negative": NEGATIVE}, weight=3.0,
                       noise=3.0)
    store = Store(db)
    settings = service_settings(
        task, audit=0.5, audit_seed=1, batch_limit=16,
        review={"refit_every": 40, "target_error": 0.2, "delta": 0.2})
    app = create_app(task, fake, store, settings=settings)
    ingest = bearer(store, ["classify", "read"], name="ingest")
    admin = bearer(store, ["admin", "read"], name="ops")
    reviewers = [bearer(store, ["review"], name=f"r{i}") for i in range(3)]
    rows = sst2_rows(data_dir, 128)
    gold = {r["text"]: r["label"] for r in rows}
    api = "/v1/tasks/sst2"
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        for start in range(0, len(rows), 16):
            batch = [{"text": r["text"], "id": f"sst2-{start + i}"}
                     for i, r in enumerate(rows[start:start + 16])]
            r = http.post(f"{api}/classify", json={"items": batch}, headers=ingest)
            assert r.status_code == 200, r.text
            assert all(x["calibration_version"] is None for x in r.json()["items"])
        counts = http.get(f"{api}/stats", headers=ingest).json()["counts"]
        assert 40 <= counts["audit"] <= 90
        # Reviewers answer with the gold labels; the audit sample comes first.
        settled = 0
        first_audit = True
        while settled < 60:
            h = reviewers[settled % 3]
            item = http.post(f"{api}/claim", json={}, headers=h).json()["item"]
            assert item is not None
            if first_audit and settled < counts["audit"]:
                assert item["audit"], "the audit sample is served first"
            r = http.post(f"/v1/items/{item['item_id']}/review",
                          json={"label": gold[item["text"]]}, headers=h)
            assert r.status_code == 200, r.text
            settled += 1
        # The refit ran in the background once 40 items were settled.
        summary = wait_for(lambda: http.get(f"{api}/calibrations", headers=ingest).json()
                           if http.get(f"{api}/calibrations", headers=ingest).json()["active"]
                           else None)
        v1 = summary["active"]
        assert v1["id"] == 1 and v1["source"] == "refit" and v1["fit_on"] == "audit sample"
        assert v1["n_fitted"] >= 40 and v1["heldout_ece"] is not None
        assert v1["raw_ece"] is not None and v1["accept_threshold"] is not None
        assert v1["target_error"] == 0.2
        stored = store.get_calibration("sst2", 1)
        assert stored.data["task"]["name"] == "sst2" and stored.data["n_fitted"] == v1["n_fitted"]
        # New items are classified with version 1.
        new = sst2_rows(data_dir, 8, skip=500)
        r = http.post(f"{api}/classify", json={"items": [{"text": x["text"]} for x in new]},
                      headers=ingest)
        after = r.json()["items"]
        assert all(x["calibration_version"] == 1 and x["calibrated"] for x in after)
        assert all(store.get_item(x["item_id"]).calibration == "1" for x in after)
        assert any(abs(x["confidence"] - x["raw_confidence"]) > 1e-6 for x in after)
        stats = http.get(f"{api}/stats", headers=ingest).json()
        assert stats["calibration"]["active"]["id"] == 1
        assert stats["audit"]["n"] >= 40 and stats["audit"]["bins"][-1]["ci_low"] is not None
        assert stats["reviews"]["total"] == 60
        # Roll back through the API: no version before 1, so none is applied.
        assert http.post(f"{api}/calibrations/rollback", headers=ingest).status_code == 403
        r = http.post(f"{api}/calibrations/rollback", headers=admin)
        assert r.status_code == 200 and r.json()["active"] is None
        plain = http.post(f"{api}/classify", json={"text": new[0]["text"] + " again"},
                          headers=ingest).json()
        assert plain["calibration_version"] is None and not plain.get("calibrated")
        assert http.post(f"{api}/calibrations/rollback", headers=admin).status_code == 409
        # A refit on demand makes version 2; the command line rolls back to version 1
        # while the server runs, and the server follows.
        r = http.post(f"{api}/calibrations/refit", headers=admin)
        assert r.status_code == 200 and r.json()["version"] == 2
        assert cli("calibrations", "rollback", "sst2", "--db", db) == 0
        again = http.post(f"{api}/classify", json={"text": new[1]["text"] + " once more"},
                          headers=ingest).json()
        assert again["calibration_version"] == 1
        assert http.post(f"{api}/calibrations/2/activate", headers=admin).status_code == 200
        latest = http.post(f"{api}/classify", json={"text": "a good and charming film"},
                           headers=ingest).json()
        assert latest["calibration_version"] == 2
        exported = http.get(f"{api}/calibrations/2", headers=ingest).json()
        assert exported["format"] == "surelabel-calibration"
    events = store.calibration_events("sst2")
    assert [e["action"] for e in reversed(events)] == [
        "refit", "rollback", "refit", "rollback", "activate"]
    store.close()


def test_refit_needs_enough_audit_rows(tmp_path: Path, data_dir: Path) -> None:
    task: Task = load_task(REPO / "bench" / "tasks" / "sst2.yaml")
    store = Store(f"sqlite:///{tmp_path / 'few.db'}")
    fake = FakeBackend(keywords={"positive": POSITIVE, "negative": NEGATIVE})
    app = create_app(task, fake, store, settings=service_settings(
        task, audit=0.0, review={"refit_every": 2}))
    ingest = bearer(store, ["classify", "review", "admin", "read"])
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        rows = sst2_rows(data_dir, 6)
        items = http.post("/v1/tasks/sst2/classify", headers=ingest,
                          json={"items": [{"text": r["text"]} for r in rows]}).json()["items"]
        for item, row in zip(items, rows):
            if item["status"] == "open":
                http.post(f"/v1/items/{item['item_id']}/review", json={"label": row["label"]},
                          headers=ingest)
        r = http.post("/v1/tasks/sst2/calibrations/refit", headers=ingest)
        assert r.status_code == 409 and "audit-sample items" in r.text
        assert "surelabel_refits" in http.get(
            "/metrics", headers=bearer(store, ["metrics"], name="prom")).text
    assert store.list_calibrations("sst2") == []
    store.close()
