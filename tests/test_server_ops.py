"""Operations and the admin pages over HTTP: /health, /metrics, the access log, and the
users, tokens, upload and export pages."""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service_support import EXAMPLES, PASSWORD, bearer, csrf_of, login, make_client
from surelabel.store import Store
from surelabel.task import Task, load_task
from surelabel.testing import FakeBackend

URL = "/v1/tasks/fruit_veg_herb/classify"


@pytest.fixture
def task() -> Task:
    return load_task(EXAMPLES / "fruit_veg_herb.yaml")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'ops.db'}")
    yield s
    s.close()


@pytest.fixture
def fake() -> FakeBackend:
    return FakeBackend(plan={"apple": [0.97, 0.02, 0.01], "tomato": [0.55, 0.44, 0.01]},
                       default=(0.6, 0.3, 0.1))


@pytest.fixture
def client(task: Task, fake: FakeBackend, store: Store) -> Iterator[TestClient]:
    with make_client(task, fake, store) as c:
        yield c


def test_health(client: TestClient, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["database"]["ok"] is True
    assert body["model"] == {"loaded": True, "name": "fake-model"}
    assert body["queue"]["depth"] == 0 and body["queue"]["limit"] == 64
    assert body["queue"]["workers_alive"] is True

    def down() -> None:
        raise ConnectionError("database is down")

    monkeypatch.setattr(store, "ping", down)
    r = client.get("/health")
    assert r.status_code == 503 and r.json()["status"] == "fail"
    assert "database is down" in r.json()["database"]["error"]


def test_metrics_in_prometheus_text_format(client: TestClient, store: Store) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    ingest = bearer(store, ["classify", "review"], name="ingest")
    client.post(URL, json={"items": [{"text": "apple"}, {"text": "tomato"}]}, headers=ingest)
    item = client.get("/v1/tasks/fruit_veg_herb/items?status=open",
                      headers=bearer(store, ["read"])).json()["items"][0]
    client.post(f"/v1/items/{item['item_id']}/review", json={"label": "vegetable"},
                headers=ingest)
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=ingest).status_code == 403
    r = client.get("/metrics", headers=bearer(store, ["metrics"], name="prom"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}

    def value(name: str, sample_name: str | None = None, **labels: str) -> float:
        for sample in families[name].samples:
            if sample_name is not None and sample.name != sample_name:
                continue
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
        raise AssertionError(f"no sample {name} {labels}")

    assert value("surelabel_items", task="fruit_veg_herb", decision="accept") == 1
    assert value("surelabel_items", task="fruit_veg_herb", decision="review") == 1
    assert value("surelabel_items_by_status", task="fruit_veg_herb", status="reviewed") == 1
    assert value("surelabel_reviews", task="fruit_veg_herb") == 1
    assert value("surelabel_calibration_version", task="fruit_veg_herb") == 0
    assert value("surelabel_queue_depth") == 0
    assert value("surelabel_http_requests", route="/v1/tasks/{task}/classify",
                 status="200") == 1
    assert value("surelabel_http_request_duration_seconds",
                 "surelabel_http_request_duration_seconds_count",
                 route="/v1/tasks/{task}/classify") == 1
    assert value("surelabel_answers", task="fruit_veg_herb", role="review") == 1
    assert value("surelabel_classified_items", task="fruit_veg_herb", decision="review") == 1


def test_structured_access_log(client: TestClient, store: Store,
                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="surelabel.access")
    h = bearer(store, ["read"], name="reader")
    r = client.get("/v1/tasks", headers={**h, "X-Request-ID": "req-42"})
    assert r.headers["x-request-id"] == "req-42"
    client.get("/v1/items/12345", headers=h)
    lines = [json.loads(rec.getMessage()) for rec in caplog.records
             if rec.name == "surelabel.access"]
    first, second = lines[-2], lines[-1]
    assert first["request_id"] == "req-42" and first["status"] == 200
    assert first["route"] == "/v1/tasks" and first["actor"] == "token:reader"
    assert first["method"] == "GET" and first["ms"] >= 0 and first["client"] == "testclient"
    assert second["route"] == "/v1/items/{item_id}" and second["status"] == 404
    assert second["path"] == "/v1/items/12345"


def test_admin_pages_need_an_admin(client: TestClient, store: Store) -> None:
    login(client, store, "ann")
    for path in ("/admin/users", "/admin/tokens", "/admin/upload", "/admin/export",
                 "/admin/export/download?task=fruit_veg_herb"):
        assert client.get(path).status_code == 403, path
    csrf = csrf_of(client.get("/review").text)
    assert client.post("/admin/users", data={"csrf": csrf, "name": "x"}).status_code == 403
    assert "/admin/users" not in client.get("/review").text


def test_admin_users_page(client: TestClient, store: Store) -> None:
    csrf = login(client, store, "root", "admin")
    page = client.get("/admin/users")
    assert page.status_code == 200 and 'id="users"' in page.text
    r = client.post("/admin/users", data={"csrf": csrf, "name": "newbie", "role": "reviewer",
                                          "tasks": ["fruit_veg_herb"], "quota": "50"})
    assert r.status_code == 200
    secret = r.text.split('id="secret">')[1].split("<")[0]
    assert store.authenticate("newbie", secret) is not None
    user = store.get_user("newbie")
    assert user.must_change_password and user.quota("fruit_veg_herb") == 50
    assert not user.can_review("other")
    r = client.post("/admin/users", data={"csrf": csrf, "name": "newbie"})
    assert r.status_code == 422 and "already exists" in r.text
    r = client.post("/admin/users/grant", data={"csrf": csrf, "name": "newbie", "task": "*",
                                                "role": "adjudicator"})
    assert r.status_code == 200 and store.get_user("newbie").can_adjudicate("other")
    r = client.post("/admin/users/grant", data={"csrf": csrf, "name": "newbie",
                                                "task": "no-such-task"})
    assert r.status_code == 422
    r = client.post("/admin/users/reset", data={"csrf": csrf, "name": "newbie"})
    again = r.text.split('id="secret">')[1].split("<")[0]
    assert again != secret and store.authenticate("newbie", again) is not None
    client.post("/admin/users/disable", data={"csrf": csrf, "name": "newbie"})
    assert store.get_user("newbie").disabled
    r = client.post("/admin/users/disable", data={"csrf": csrf, "name": "root"})
    assert r.status_code == 422 and not store.get_user("root").disabled
    client.post("/admin/users/enable", data={"csrf": csrf, "name": "newbie"})
    client.post("/admin/users/admin", data={"csrf": csrf, "name": "newbie"})
    assert store.get_user("newbie").is_admin
    r = client.post("/admin/users/revoke", data={"csrf": csrf, "name": "newbie",
                                                 "task": "fruit_veg_herb"})
    assert r.status_code == 200
    assert client.post("/admin/users/explode", data={"csrf": csrf, "name": "x"}).status_code \
        == 404
    assert client.post("/admin/users/reset", data={"csrf": "forged", "name": "newbie"}
                       ).status_code == 403


def test_admin_tokens_page(client: TestClient, store: Store) -> None:
    csrf = login(client, store, "root", "admin")
    r = client.post("/admin/tokens", data={"csrf": csrf, "name": "veg-bot",
                                           "scopes": ["classify", "read"],
                                           "task": "fruit_veg_herb"})
    assert r.status_code == 200
    token = r.text.split('id="secret">')[1].split("<")[0]
    found = store.check_token(token)
    assert found is not None and found.task == "fruit_veg_herb"
    assert found.scopes == ("classify", "read")
    assert client.post(URL, json={"text": "apple"},
                       headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert token not in client.get("/admin/tokens").text  # shown once
    r = client.post("/admin/tokens", data={"csrf": csrf, "name": "x", "scopes": ["root"]})
    assert r.status_code == 422
    client.post("/admin/tokens/revoke", data={"csrf": csrf, "token_id": str(found.id)})
    assert store.check_token(token) is None


def _wait_job(client: TestClient, location: str) -> str:
    deadline = time.monotonic() + 30
    while True:
        page = client.get(location).text
        state = page.split('data-state="')[1].split('"')[0]
        if state in ("done", "failed"):
            return page
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_admin_upload_and_export(client: TestClient, store: Store, tmp_path: Path,
                                 fmt: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    csrf = login(client, store, "root", "admin")
    rows = [{"id": f"u{i}", "text": f"item {i}"} for i in range(70)] + [
        {"id": "apple-1", "text": "apple"}, {"id": "blank", "text": "   "}]
    if fmt == "jsonl":
        content = "".join(json.dumps(r) + "\n" for r in rows).encode()
    elif fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, ["id", "text"])
        writer.writeheader()
        writer.writerows(rows)
        content = buf.getvalue().encode()
    else:
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), sink)
        content = sink.getvalue()
    for attempt in (1, 2):  # a second upload of the same file stores nothing twice
        r = client.post("/admin/upload", data={"csrf": csrf, "task": "fruit_veg_herb"},
                        files={"file": (f"rows.{fmt}", content)}, follow_redirects=False)
        assert r.status_code == 303, r.text
        page = _wait_job(client, r.headers["location"])
        assert 'data-state="done"' in page and '<span id="done">72</span> of 72' in page
        if attempt == 1:
            assert "71 new" in page and "1 could not be classified" in page
        else:
            assert "0 new, 72 already stored" in page
    assert store.count_matching("fruit_veg_herb") == 72
    bad = client.post("/admin/upload", data={"csrf": csrf, "task": "fruit_veg_herb"},
                      files={"file": ("rows.txt", b"hello")})
    assert bad.status_code == 422 and ".jsonl, .csv or .parquet" in bad.text
    broken = client.post("/admin/upload", data={"csrf": csrf, "task": "fruit_veg_herb"},
                         files={"file": ("rows.jsonl", b'{"txt": 1}\n')})
    assert broken.status_code == 422 and "rows.jsonl:1" in broken.text
    # Export: everything, and the settled items as labelled rows, in each format.
    item = store.find_item("fruit_veg_herb", "u3")
    assert item is not None
    store.answer(item.id, "root", label="herb")
    for which, n in (("all", 72), ("reviewed", 1)):
        r = client.get(f"/admin/export/download?task=fruit_veg_herb&which={which}&format={fmt}")
        assert r.status_code == 200
        assert f'filename="fruit_veg_herb-{which}.{fmt}"' in r.headers["content-disposition"]
        got = _read(r.content, fmt, tmp_path)
        assert len(got) == n
        if which == "reviewed":
            assert got[0]["label"] == "herb" and got[0]["id"] == "u3"
        elif fmt != "jsonl":
            assert "p_fruit" in got[0]  # a table: one column per label's probability
    assert client.get("/admin/export/download?task=fruit_veg_herb&format=xml").status_code \
        == 422


def _read(content: bytes, fmt: str, tmp: Path) -> list[dict[str, Any]]:
    if fmt == "jsonl":
        return [json.loads(x) for x in content.decode().splitlines() if x.strip()]
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(content.decode())))
    import pyarrow.parquet as pq

    path = tmp / "export.parquet"
    path.write_bytes(content)
    return list(pq.read_table(path).to_pylist())


def test_upload_body_limit_is_its_own(task: Task, fake: FakeBackend, store: Store) -> None:
    with make_client(task, fake, store, max_body_bytes=1000, max_upload_bytes=50_000) as c:
        csrf = login(c, store, "root", "admin")
        content = "".join(json.dumps({"text": f"row {i} " + "x" * 50}) + "\n"
                          for i in range(1000)).encode()
        assert len(content) > 50_000
        r = c.post("/admin/upload", data={"csrf": csrf, "task": "fruit_veg_herb"},
                   files={"file": ("big.jsonl", content)})
        assert r.status_code == 413
        r = c.post("/admin/upload", data={"csrf": csrf, "task": "fruit_veg_herb"},
                   files={"file": ("ok.jsonl", content[:20_000].rsplit(b"\n", 1)[0])},
                   follow_redirects=False)
        assert r.status_code == 303
        assert c.post(URL, json={"text": "y" * 2000},
                      headers=bearer(store, ["classify"])).status_code == 413
    assert PASSWORD
