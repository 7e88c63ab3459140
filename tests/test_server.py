"""The review service through HTTP (Starlette's TestClient: httpx over the ASGI app).

The shipped fake backend (``surelabel.testing.FakeBackend``) with fixed label probabilities
keeps these fast; one test goes through the real embedded model.
"""

from __future__ import annotations

import ast
import math
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service_support import EXAMPLES, PASSWORD, REPO, Clock, item_id, make_client
from service_support import login as _login
from surelabel.server import Settings, create_app
from surelabel.store import Store
from surelabel.task import Task, load_task
from surelabel.testing import FakeBackend


@pytest.fixture
def task() -> Task:
    return load_task(EXAMPLES / "fruit_veg_herb.yaml")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'server.db'}", clock=clock)
    yield s
    s.close()


@pytest.fixture
def fake() -> FakeBackend:
    return FakeBackend(plan={
        "apple": [0.97, 0.02, 0.01],     # accept
        "tomato": [0.55, 0.44, 0.01],    # review
        "rhubarb": [0.7, 0.29, 0.01],    # review
        "mystery": [0.4, 0.35, 0.25],    # clarify
    })


@pytest.fixture
def client(task: Task, fake: FakeBackend, store: Store) -> Iterator[TestClient]:
    with make_client(task, fake, store, batch_limit=4, max_pending=8,
                     max_body_bytes=50_000) as c:
        yield c


@pytest.fixture
def tokens(store: Store) -> dict[str, dict[str, str]]:
    def auth(scopes: Sequence[str]) -> dict[str, str]:
        return {"Authorization": f"Bearer {store.create_token('t', scopes)}"}

    return {
        "all": auth(["classify", "read", "review"]),
        "ingest": auth(["classify"]),
        "read": auth(["read"]),
    }


URL = "/v1/tasks/fruit_veg_herb/classify"


def test_auth_missing_wrong_and_scope(client: TestClient, tokens: dict[str, Any]) -> None:
    r = client.post(URL, json={"text": "apple"})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    r = client.post(URL, json={"text": "apple"}, headers={"Authorization": "Bearer sl_nope"})
    assert r.status_code == 401
    r = client.post(URL, json={"text": "apple"}, headers={"Authorization": "Basic abc"})
    assert r.status_code == 401
    assert client.post(URL, json={"text": "apple"}, headers=tokens["read"]).status_code == 403
    assert client.get("/v1/tasks", headers=tokens["ingest"]).status_code == 403
    r = client.post("/v1/items/1/review", json={"label": "fruit"}, headers=tokens["ingest"])
    assert r.status_code == 403
    assert client.get("/v1/tasks", headers=tokens["read"]).status_code == 200


def test_classify_one_stores_the_record(
    client: TestClient, tokens: dict[str, Any], store: Store
) -> None:
    r = client.post(URL, json={"text": "tomato", "id": "t-1"}, headers=tokens["ingest"])
    assert r.status_code == 200, r.text
    rec = r.json()
    assert rec["label"] == "fruit" and rec["decision"] == "review"
    assert set(rec["probabilities"]) == {"fruit", "vegetable", "herb"}
    assert math.isclose(sum(rec["probabilities"].values()), 1.0, abs_tol=1e-5)
    assert rec["reason"] and rec["model"] == "fake-model" and rec["id"] == "t-1"
    assert rec["status"] == "open" and rec["item_id"] >= 1
    stored = store.get_item(rec["item_id"])
    assert stored.text == "tomato" and stored.record["confidence"] == rec["confidence"]
    got = client.get(f"/v1/items/{rec['item_id']}", headers=tokens["read"]).json()
    assert got["label"] == "fruit" and got["review"] is None


def test_classify_is_idempotent_by_client_id(
    client: TestClient, tokens: dict[str, Any], fake: FakeBackend, store: Store
) -> None:
    first = client.post(URL, json={"text": "apple", "id": 7}, headers=tokens["ingest"]).json()
    calls = fake.calls
    again = client.post(URL, json={"text": "apple", "id": 7}, headers=tokens["ingest"]).json()
    assert again["item_id"] == first["item_id"] and fake.calls == calls
    batch = client.post(URL, json={"items": [{"text": "apple", "id": 7},
                                             {"text": "tomato", "id": 8}]},
                        headers=tokens["ingest"]).json()["items"]
    assert batch[0]["item_id"] == first["item_id"] and batch[1]["id"] == 8
    assert len(list(store.all_items("fruit_veg_herb"))) == 2


def test_batch_and_validation_errors(client: TestClient, tokens: dict[str, Any]) -> None:
    h = tokens["ingest"]
    r = client.post(URL, json={"items": [{"text": "apple"}, {"text": "mystery"}]}, headers=h)
    assert r.status_code == 200
    assert [x["decision"] for x in r.json()["items"]] == ["accept", "clarify"]
    too_many = {"items": [{"text": f"x{i}"} for i in range(5)]}
    r = client.post(URL, json=too_many, headers=h)
    assert r.status_code == 422 and "at most 4" in r.json()["detail"]
    for bad in ({"text": "   "}, {"txt": "apple"}, {"text": 5}, {"items": []},
                {"text": "a", "extra": 1}, {"text": "x" * 20_001}):
        r = client.post(URL, json=bad, headers=h)
        assert r.status_code == 422, bad
        assert r.json()["detail"]
    r = client.post(URL, content=b"{not json", headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 422
    r = client.post("/v1/tasks/nope/classify", json={"text": "a"}, headers=h)
    assert r.status_code == 404


def test_body_limit(client: TestClient, tokens: dict[str, Any]) -> None:
    r = client.post(URL, json={"items": [{"text": "y" * 19_000}] * 3}, headers=tokens["ingest"])
    assert r.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
        yield b'{"text": "'
        for _ in range(60):
            yield b"z" * 1000
        yield b'"}'

    r = client.post(URL, content=chunks(), headers={**tokens["ingest"],
                                                   "Content-Type": "application/json"})
    assert r.status_code == 413


def test_queue_listing_order_and_filters(
    client: TestClient, tokens: dict[str, Any], clock: Clock
) -> None:
    for text in ["rhubarb", "apple", "tomato", "mystery"]:
        client.post(URL, json={"text": text}, headers=tokens["ingest"])
        clock.t += 10
    base = "/v1/tasks/fruit_veg_herb/items"
    h = tokens["read"]
    review = client.get(f"{base}?decision=review&status=open", headers=h).json()["items"]
    assert [i["text"] for i in review] == ["tomato", "rhubarb"]
    open_ = client.get(f"{base}?status=open", headers=h).json()["items"]
    assert [i["text"] for i in open_] == ["mystery", "tomato", "rhubarb"]
    oldest = client.get(f"{base}?status=open&order=oldest", headers=h).json()["items"]
    assert [i["text"] for i in oldest] == ["rhubarb", "tomato", "mystery"]
    assert client.get(f"{base}?decision=maybe", headers=h).status_code == 422
    assert client.get(f"{base}?limit=0", headers=h).status_code == 422
    tasks = client.get("/v1/tasks", headers=h).json()["tasks"]
    assert tasks[0]["name"] == "fruit_veg_herb"
    assert tasks[0]["counts"]["open"] == 3 and tasks[0]["counts"]["accept"] == 1


def test_review_api_and_double_review_refused(
    client: TestClient, tokens: dict[str, Any], store: Store
) -> None:
    item = client.post(URL, json={"text": "tomato"}, headers=tokens["ingest"]).json()
    url = f"/v1/items/{item['item_id']}/review"
    h = tokens["all"]
    assert client.post(url, json={"label": "meat"}, headers=h).status_code == 422
    assert client.post(url, json={}, headers=h).status_code == 422
    assert client.post(url, json={"label": "fruit", "clarify": True},
                       headers=h).status_code == 422
    r = client.post(url, json={"label": "vegetable"}, headers=h)
    assert r.status_code == 200 and r.json()["review"]["action"] == "correct"
    r2 = client.post(url, json={"label": "fruit"}, headers=h)
    assert r2.status_code == 409 and "already answered" in r2.json()["detail"]
    assert store.get_item(item["item_id"]).review_label == "vegetable"
    other = client.post(URL, json={"text": "mystery"}, headers=tokens["ingest"]).json()
    r3 = client.post(f"/v1/items/{other['item_id']}/review",
                     json={"clarify": True, "note": "which mystery?"}, headers=h)
    assert r3.status_code == 200 and r3.json()["review"]["note"] == "which mystery?"
    assert client.post("/v1/items/999/review", json={"label": "fruit"},
                       headers=h).status_code == 404
    stats = client.get("/v1/tasks/fruit_veg_herb/stats", headers=tokens["read"]).json()
    assert stats["reviews"]["total"] == 2


def test_queue_full_gives_503_with_retry_after(
    task: Task, fake: FakeBackend, store: Store, tokens: dict[str, Any]
) -> None:
    with make_client(task, fake, store, batch_limit=2, max_pending=2) as client:
        gate = threading.Event()
        pool = client.app.state.service.pool  # type: ignore[attr-defined]
        pool.submit(lambda: gate.wait(30), weight=2)
        try:
            r = client.post(URL, json={"text": "apple"}, headers=tokens["ingest"])
            assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        finally:
            gate.set()
        r = client.post(URL, json={"text": "apple"}, headers=tokens["ingest"])
        assert r.status_code == 200


def test_classification_does_not_block_the_event_loop(
    client: TestClient, fake: FakeBackend, tokens: dict[str, Any]
) -> None:
    fake.hold()
    fake.entered.clear()
    result: dict[str, int] = {}

    def post() -> None:
        result["status"] = client.post(URL, json={"text": "apple"},
                                       headers=tokens["ingest"]).status_code

    t = threading.Thread(target=post)
    t.start()
    assert fake.entered.wait(10)  # the model is busy with that request...
    assert client.get("/v1/tasks", headers=tokens["read"]).status_code == 200  # ...and we answer
    fake.release()
    t.join(10)
    assert result["status"] == 200


def test_openapi_and_docs(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "/v1/tasks/{task}/classify" in spec["paths"]
    assert "/v1/items/{item_id}/review" in spec["paths"]
    assert not any(p.startswith(("/admin", "/review")) for p in spec["paths"])
    assert client.get("/docs").status_code == 200


# -- web pages --------------------------------------------------------------------------


def login(client: TestClient, store: Store, name: str = "alice") -> str:
    return _login(client, store, name)


def test_pages_need_login(client: TestClient) -> None:
    for path in ("/review", "/review/fruit_veg_herb", "/stats", "/review/items/1"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")


def test_login_refuses_bad_password_and_missing_csrf(client: TestClient, store: Store) -> None:
    password = store.add_user("bob", password=PASSWORD)
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    r = client.post("/login", data={"username": "bob", "password": "wrong", "csrf": csrf})
    assert r.status_code == 401 and "Wrong user name or password" in r.text
    r = client.post("/login", data={"username": "bob", "password": password})
    assert r.status_code == 403
    r = client.post("/login", data={"username": "bob", "password": password, "csrf": "forged"})
    assert r.status_code == 403
    r = client.post("/login", data={"username": "bob", "password": password,
                                    "csrf": csrf, "next": "https://evil.example/"},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/review"


def test_review_flow_next_item_opens(
    client: TestClient, store: Store, tokens: dict[str, Any]
) -> None:
    for text in ["rhubarb", "tomato", "mystery", "apple"]:
        client.post(URL, json={"text": text}, headers=tokens["ingest"])
    csrf = login(client, store)
    queue = client.get("/review/fruit_veg_herb")
    assert queue.status_code == 200 and "open 3" in queue.text
    r = client.get("/review/fruit_veg_herb/next", follow_redirects=True)
    assert "mystery" in r.text and "Needs clarification" in r.text
    first_id = item_id(r)
    r = client.post(f"/review/items/{first_id}",
                    data={"csrf": csrf, "choice": "clarify", "note": "what is it?"})
    assert r.status_code == 200 and "tomato" in r.text  # the next item opened
    second_id = item_id(r)
    r = client.post(f"/review/items/{second_id}", data={"csrf": csrf, "choice": "label:vegetable"})
    assert "rhubarb" in r.text
    third_id = item_id(r)
    r = client.post(f"/review/items/{third_id}", data={"csrf": csrf, "choice": "accept"})
    assert "No items left for you" in r.text
    answers = {i.text: (i.review_action, i.review_label, i.review_note, i.reviewer)
               for i in store.reviewed("fruit_veg_herb")}
    assert answers == {
        "mystery": ("clarify", None, "what is it?", "alice"),
        "tomato": ("correct", "vegetable", None, "alice"),
        "rhubarb": ("accept", "fruit", None, "alice"),
    }
    r = client.post(f"/review/items/{third_id}", data={"csrf": csrf, "choice": "accept"})
    assert r.status_code == 409 and "already answered" in r.text
    stats = client.get("/stats")
    assert stats.status_code == 200 and "<svg" in stats.text and "agreement-chart" in stats.text


def test_form_post_without_csrf_is_refused(
    client: TestClient, store: Store, tokens: dict[str, Any]
) -> None:
    item = client.post(URL, json={"text": "tomato"}, headers=tokens["ingest"]).json()
    login(client, store)
    for data in ({"choice": "accept"}, {"choice": "accept", "csrf": "wrong"}):
        r = client.post(f"/review/items/{item['item_id']}", data=data)
        assert r.status_code == 403
    assert store.get_item(item["item_id"]).status == "open"
    assert client.post("/logout", data={}).status_code == 403


def test_item_text_renders_inert(
    client: TestClient, store: Store, tokens: dict[str, Any]
) -> None:
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)><b>bold</b>'
    item = client.post(URL, json={"text": evil, "id": "<i>id</i>"},
                       headers=tokens["ingest"]).json()
    login(client, store)
    for path in (f"/review/items/{item['item_id']}", "/review/fruit_veg_herb"):
        page = client.get(path)
        assert "<script>alert" not in page.text and "<img src=x" not in page.text
        assert "&lt;script&gt;alert" in page.text
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert page.headers["x-frame-options"] == "DENY"
    assert "<script" not in "".join(
        line for line in client.get(f"/review/items/{item['item_id']}").text.splitlines()
        if "/static/review.js" not in line
    )


def test_leases_between_two_reviewers(
    task: Task, fake: FakeBackend, store: Store, tokens: dict[str, Any], clock: Clock
) -> None:
    with make_client(task, fake, store, lease_seconds=60) as alice, \
            make_client(task, fake, store, lease_seconds=60) as bob:
        for text in ["tomato", "rhubarb"]:
            alice.post(URL, json={"text": text}, headers=tokens["ingest"])
        a_csrf = login(alice, store, "alice")
        b_csrf = login(bob, store, "bob")
        a = alice.get("/review/fruit_veg_herb/next")
        b = bob.get("/review/fruit_veg_herb/next")
        a_id = item_id(a)
        b_id = item_id(b)
        assert a_id != b_id
        assert "being reviewed by alice" in bob.get(f"/review/items/{a_id}").text
        r = bob.post(f"/review/items/{a_id}", data={"csrf": b_csrf, "choice": "accept"})
        assert r.status_code == 409 and "claimed by alice" in r.text
        clock.t += 61  # alice walked away; her lease ran out
        r = bob.post(f"/review/items/{a_id}", data={"csrf": b_csrf, "choice": "accept"})
        assert r.status_code == 200
        assert store.get_item(a_id).reviewer == "bob"
        r = alice.post(f"/review/items/{a_id}", data={"csrf": a_csrf, "choice": "accept"})
        assert r.status_code == 409


@pytest.mark.model
def test_real_model_through_the_api(backend: Any, store: Store) -> None:
    task = load_task(EXAMPLES / "pineapple.yaml")
    app = create_app(task, backend, store, settings=Settings(reason=False, audit_seed=0))
    token = store.create_token("bot", ["classify", "read"])
    with TestClient(app) as client:
        r = client.post(f"/v1/tasks/{task.name}/classify",
                        json={"items": [{"text": "Hawaiian pizza", "id": 1},
                                        {"text": "cheese pizza", "id": 2}]},
                        headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    for rec in r.json()["items"]:
        assert rec["error"] is None and rec["method"] == "exact"
        assert math.isclose(sum(rec["probabilities"].values()), 1.0, abs_tol=1e-4)
        assert 0 < rec["label_mass"] <= 1
        assert rec["decision"] in ("accept", "review", "clarify")


def test_api_on_postgresql(task: Task, fake: FakeBackend) -> None:
    """The same service on a real PostgreSQL: idempotent inserts, queue order, one answer."""
    from support import pg_schema_url

    with pg_schema_url("srv") as db, Store(db) as store:
        h = {"Authorization": f"Bearer {store.create_token('t', ['classify', 'read', 'review'])}"}
        with make_client(task, fake, store) as client:
            for text_ in ["rhubarb", "tomato", "mystery", "apple"]:
                r = client.post(URL, json={"text": text_, "id": text_}, headers=h)
                assert r.status_code == 200, r.text
            again = client.post(URL, json={"text": "tomato", "id": "tomato"}, headers=h).json()
            items = client.get("/v1/tasks/fruit_veg_herb/items?status=open", headers=h).json()
            assert [i["text"] for i in items["items"]] == ["mystery", "tomato", "rhubarb"]
            assert again["item_id"] == items["items"][1]["item_id"]
            url = f"/v1/items/{again['item_id']}/review"
            assert client.post(url, json={"label": "vegetable"}, headers=h).status_code == 200
            assert client.post(url, json={"label": "fruit"}, headers=h).status_code == 409


def test_accepted_items_can_be_spot_checked(
    client: TestClient, store: Store, tokens: dict[str, Any]
) -> None:
    item = client.post(URL, json={"text": "apple"}, headers=tokens["ingest"]).json()
    assert item["status"] == "auto"
    err, _ = store.add_item("fruit_veg_herb", {"id": None, "text": "x", "error": "boom"})
    csrf = login(client, store)
    page = client.get(f"/review/items/{item['item_id']}")
    assert "spot check" in page.text and 'value="accept"' in page.text
    assert "could not be classified: boom" in client.get(f"/review/items/{err.id}").text
    r = client.post(f"/review/items/{item['item_id']}",
                    data={"csrf": csrf, "choice": "label:vegetable"})
    assert r.status_code == 200
    done = store.get_item(item["item_id"])
    assert done.review_action == "correct" and done.review_label == "vegetable"


def test_multilabel_item_review(fake: FakeBackend, store: Store) -> None:
    task = Task.from_dict({
        "name": "topics", "instructions": "Which topics does the text touch?",
        "kind": "multilabel", "labels": ["food", "travel", "money"], "field": "topics",
    })
    token = store.create_token("t", ["classify", "read", "review"])
    h = {"Authorization": f"Bearer {token}"}
    with make_client(task, fake, store) as client:
        rec = client.post("/v1/tasks/topics/classify", json={"text": "cheap eats in Rome"},
                          headers=h).json()
        assert set(rec["probabilities"]) == {"food", "travel", "money"}
        assert rec["labels"] == ["food", "travel", "money"] and rec["status"] == "open"
        csrf = login(client, store)
        page = client.get(f"/review/items/{rec['item_id']}")
        assert 'type="checkbox" name="labels"' in page.text
        r = client.post(f"/review/items/{rec['item_id']}",
                        data={"csrf": csrf, "choice": "labels", "labels": ["travel", "food"]})
        assert r.status_code == 200
        done = store.get_item(rec["item_id"])
        assert done.review_label == ["food", "travel"] and done.review_action == "correct"
        other = client.post("/v1/tasks/topics/classify", json={"text": "bank fees"},
                            headers=h).json()
        bad = client.post(f"/v1/items/{other['item_id']}/review",
                          json={"label": ["food", "cars"]}, headers=h)
        assert bad.status_code == 422
        ok = client.post(f"/v1/items/{other['item_id']}/review",
                         json={"label": ["money"]}, headers=h)
        assert ok.status_code == 200 and ok.json()["review"]["label"] == ["money"]
        # The web form checks answers as the API does: a single-label choice on a
        # multilabel task is stored as a list of labels, as the API would store it.
        third = client.post("/v1/tasks/topics/classify", json={"text": "train to Paris"},
                            headers=h).json()
        client.get(f"/review/items/{third['item_id']}")
        r = client.post(f"/review/items/{third['item_id']}",
                        data={"csrf": csrf, "choice": "label:travel"})
        assert r.status_code == 200
        assert store.get_item(third["item_id"]).review_label == ["travel"]


def test_web_accept_of_an_unclassified_item_is_refused(
    client: TestClient, store: Store
) -> None:
    err, _ = store.add_item("fruit_veg_herb", {"id": None, "text": "x", "error": "boom"})
    csrf = login(client, store)
    r = client.post(f"/review/items/{err.id}", data={"csrf": csrf, "choice": "accept"})
    assert r.status_code == 422 and "needs a label" in r.text
    assert store.get_item(err.id).review_action is None


def test_item_page_shows_bars_reason_and_label_set(client: TestClient, store: Store) -> None:
    record = {"id": None, "text": "quince", "label": "fruit", "confidence": 0.62,
              "probabilities": {"fruit": 0.62, "vegetable": 0.3, "herb": 0.08},
              "label_mass": 0.91, "decision": "review", "reason": "hard & sour <fruit>",
              "label_set": ["fruit", "vegetable"], "model": "fake", "error": None}
    item, _ = store.add_item("fruit_veg_herb", record)
    login(client, store)
    page = client.get(f"/review/items/{item.id}").text
    assert page.count("<svg width=\"240\"") == 3 and 'width="148.8"' in page  # 0.62 * 240
    assert "hard &amp; sour &lt;fruit&gt;" in page
    assert "Plausible labels (conformal set)" in page and page.count("in set") == 2
    assert "label mass 0.910" in page


def test_server_and_store_modules_import_one_way() -> None:
    """No module of the server or the store imports one that imports it back, at any depth
    (imports inside functions count too)."""
    src = REPO / "src"
    files = {
        ".".join(path.relative_to(src).with_suffix("").parts).removesuffix(".__init__"): path
        for pkg in ("server", "store")
        for path in sorted((src / "surelabel" / pkg).glob("*.py"))
    }
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:  # `from package import submodule` names the submodule
                    sub = f"{node.module}.{a.name}"
                    targets.add(sub if sub in files else node.module)
        graph[name] = {t for t in targets if t in files and t != name}

    def cycle_from(start: str, path: list[str]) -> list[str] | None:
        for nxt in sorted(graph[path[-1]]):
            if nxt == start:
                return [*path, nxt]
            if nxt not in path:
                found = cycle_from(start, [*path, nxt])
                if found:
                    return found
        return None

    assert {"surelabel.server.app", "surelabel.store.repository"} <= set(graph)
    for name in graph:
        cycle = cycle_from(name, [name])
        assert cycle is None, " -> ".join(cycle)
