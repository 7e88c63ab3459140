"""Regression tests of the holes S1-S8 of issue 13, each against the service over HTTP.

S1 and S2 also run against a real uvicorn on 127.0.0.1 (a crash while writing a response
resets the keep-alive connection there, which the ASGI test client cannot show).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service_support import (
    EXAMPLES,
    PASSWORD,
    Clock,
    LiveServer,
    bearer,
    csrf_of,
    login,
    make_client,
    service_settings,
)
from surelabel.server import create_app
from surelabel.server.middleware import CSP
from surelabel.store import LoginLimits, Store
from surelabel.task import Task, load_task
from surelabel.testing import FakeBackend

URL = "/v1/tasks/fruit_veg_herb/classify"


@pytest.fixture
def task() -> Task:
    return load_task(EXAMPLES / "fruit_veg_herb.yaml")


@pytest.fixture
def other() -> Task:
    return Task.from_dict({"name": "pets", "instructions": "Which pet?",
                           "labels": ["cat", "dog"], "kind": "multiclass"})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'sec.db'}", clock=clock)
    yield s
    s.close()


@pytest.fixture
def fake() -> FakeBackend:
    return FakeBackend(plan={"tomato": [0.55, 0.44, 0.01], "rhubarb": [0.7, 0.29, 0.01]})


@pytest.fixture
def client(task: Task, fake: FakeBackend, store: Store) -> Iterator[TestClient]:
    with make_client(task, fake, store) as c:
        yield c


# -- S1: lone surrogates -------------------------------------------------------------


def test_s1_lone_surrogate_is_a_422_and_the_connection_lives_on(
    task: Task, fake: FakeBackend, store: Store
) -> None:
    token = bearer(store, ["classify", "review", "read"])
    app = create_app(task, fake, store, settings=service_settings(task))
    body = b'{"text": "lone \\ud800"}'
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        h = {**token, "Content-Type": "application/json"}
        r = http.post(URL, content=body, headers=h)
        assert r.status_code == 422
        assert "\\ud800" in r.text  # echoed, escaped: the answer is valid JSON
        json.loads(r.text)
        # The same keep-alive connection answers the next request.
        ok = http.post(URL, json={"text": "tomato"}, headers=token)
        assert ok.status_code == 200, ok.text
        for bad in (b'{"text": "ok", "id": "\\udfff"}', b'{"items": [{"text": "\\ud83d"}]}'):
            assert http.post(URL, content=bad, headers=h).status_code == 422
        review = http.post(f"/v1/items/{ok.json()['item_id']}/review", headers=h,
                           content=b'{"clarify": true, "note": "\\ud800"}')
        assert review.status_code == 422
    assert store.count_matching("fruit_veg_herb") == 1


# -- S2: ids beyond a 64-bit integer ---------------------------------------------------


def test_s2_huge_ids_are_4xx(task: Task, fake: FakeBackend, store: Store) -> None:
    token = bearer(store, ["classify", "review", "read"])
    app = create_app(task, fake, store, settings=service_settings(task))
    huge = "99999999999999999999999"
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.get(f"/v1/items/{huge}", headers=token).status_code == 422
        assert http.post(f"/v1/items/{huge}/review", json={"label": "fruit"},
                         headers=token).status_code == 422
        assert http.get(f"/v1/items/{2**63}", headers=token).status_code == 422
        assert http.get(f"/v1/items/{2**63 - 1}", headers=token).status_code == 404
        assert http.get("/v1/items/-1", headers=token).status_code == 422
        r = http.get(f"/v1/tasks/fruit_veg_herb/items?q={huge}", headers=token)
        assert r.status_code == 200 and r.json()["items"] == []
        r = http.get(f"/v1/tasks/fruit_veg_herb/items?offset={huge}", headers=token)
        assert r.status_code == 422
    with TestClient(app) as client:
        login(client, store)
        assert client.get(f"/review/items/{huge}").status_code == 422
        assert client.get(f"/review/items/{2**63 - 1}").status_code == 404
        assert client.get(f"/review/fruit_veg_herb?q={huge}").status_code == 200


# -- S3: login throttling and lockout --------------------------------------------------


def _try(client: TestClient, name: str, password: str, **kw: Any) -> Any:
    csrf = csrf_of(client.get("/login").text)
    return client.post("/login", data={"username": name, "password": password, "csrf": csrf},
                       follow_redirects=False, **kw)


def test_s3_login_is_throttled_per_account_then_locked(
    task: Task, fake: FakeBackend, store: Store, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    limits = LoginLimits(window=300, per_account=5, per_address=100, lockout_after=8,
                         lockout_seconds=900)
    store.add_user("u3", "reviewer", PASSWORD)
    caplog.set_level(logging.WARNING, logger="surelabel.server")
    with make_client(task, fake, store, login=limits) as client:
        for _ in range(5):
            assert _try(client, "u3", "wrong").status_code == 401
        r = _try(client, "u3", "wrong")
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
        assert "Too many failed logins" in r.text
        # Throttled: even the right password is not checked until the window moves on.
        assert _try(client, "u3", PASSWORD).status_code == 429
        clock.t += int(r.headers["retry-after"]) + 1
        for _ in range(3):
            assert _try(client, "u3", "wrong").status_code == 401
        # Eight failures in a row: the account is locked, the right password refused.
        r = _try(client, "u3", PASSWORD)
        assert r.status_code == 429 and 850 < int(r.headers["retry-after"]) <= 900
        assert any("locked" in rec.getMessage() for rec in caplog.records)
        assert any("login failed" in rec.getMessage() for rec in caplog.records)
        clock.t += 901
        assert _try(client, "u3", PASSWORD).status_code == 303
    assert store.get_user("u3").locked_until is None


def test_s3_login_is_throttled_per_client_address(
    task: Task, fake: FakeBackend, store: Store
) -> None:
    limits = LoginLimits(per_account=100, per_address=4, lockout_after=100)
    with make_client(task, fake, store, login=limits) as client:
        for i in range(4):  # four different (unknown) names from one address
            assert _try(client, f"nobody{i}", "x").status_code == 401
        r = _try(client, "someone-else", "x")
        assert r.status_code == 429 and "retry-after" in r.headers


def test_s3_unlock_and_reset_lift_a_lockout(store: Store, clock: Clock) -> None:
    limits = LoginLimits(lockout_after=2, per_account=10)
    store.add_user("v", "reviewer", PASSWORD)
    assert not store.record_login_failure("v", "1.2.3.4", limits)
    assert store.record_login_failure("v", "1.2.3.4", limits)
    assert store.login_retry_after("v", "5.6.7.8", limits) > 800
    store.unlock_user("v")
    assert store.login_retry_after("v", "5.6.7.8", limits) == 0


# -- S4: sessions end on a password reset, a role change and when disabled --------------


@pytest.mark.parametrize("change", ["reset", "role", "grant", "disable"])
def test_s4_sessions_are_revoked(
    change: str, task: Task, fake: FakeBackend, store: Store
) -> None:
    with make_client(task, fake, store) as client:
        login(client, store, "u3")
        assert client.get("/review", follow_redirects=False).status_code == 200
        if change == "reset":
            store.set_password("u3")
        elif change == "role":
            store.set_role("u3", "admin")
        elif change == "grant":
            store.grant("u3", "fruit_veg_herb", "adjudicator")
        else:
            store.disable_user("u3")
        r = client.get("/review", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
    if change == "disable":
        assert store.authenticate("u3", PASSWORD) is None


# -- S5: a one-time password must be replaced at the first login -----------------------


def test_s5_one_time_password_forces_a_new_one(
    task: Task, fake: FakeBackend, store: Store
) -> None:
    one_time = store.add_user("newbie")  # generated: one-time
    with make_client(task, fake, store) as client:
        r = _try(client, "newbie", one_time)
        assert r.status_code == 303 and r.headers["location"].startswith("/account/password")
        # Every page sends them to the password form until they chose one.
        r = client.get("/review/fruit_veg_herb", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/account/password")
        page = client.get("/account/password")
        csrf = csrf_of(page.text)
        assert "one-time password" in page.text
        weak = client.post("/account/password", data={"csrf": csrf, "current": one_time,
                                                      "new": "short", "repeat": "short"})
        assert weak.status_code == 422 and "at least 10 characters" in weak.text
        same = client.post("/account/password", data={
            "csrf": csrf, "current": one_time, "new": one_time, "repeat": one_time})
        assert same.status_code == 422
        r = client.post("/account/password", data={
            "csrf": csrf, "current": one_time, "new": PASSWORD, "repeat": PASSWORD,
            "next": "/review/fruit_veg_herb"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/review/fruit_veg_herb"
        assert client.get("/review/fruit_veg_herb", follow_redirects=False).status_code == 200
    assert store.authenticate("newbie", one_time) is None
    user = store.authenticate("newbie", PASSWORD)
    assert user is not None and not user.must_change_password
    # A reset hands out a new one-time password again.
    again = store.set_password("newbie")
    assert store.get_user("newbie").must_change_password
    assert store.authenticate("newbie", again) is not None


# -- S6: per-task roles and task-scoped tokens -----------------------------------------


def test_s6_reviewers_work_only_on_their_tasks(
    task: Task, other: Task, fake: FakeBackend, store: Store
) -> None:
    token = bearer(store, ["classify", "read"])
    with make_client([task, other], fake, store) as client:
        pet = client.post("/v1/tasks/pets/classify", json={"text": "tabby"},
                          headers=token).json()
        veg = client.post(URL, json={"text": "tomato"}, headers=token).json()
        csrf = login(client, store, "vera", tasks=["fruit_veg_herb"])
        assert "pets" not in client.get("/review").text
        assert client.get("/review/pets").status_code == 403
        assert client.get("/review/pets/next").status_code == 403
        assert client.get(f"/review/items/{pet['item_id']}").status_code == 403
        r = client.post(f"/review/items/{pet['item_id']}",
                        data={"csrf": csrf, "choice": "label:cat"})
        assert r.status_code == 403
        assert store.get_item(pet["item_id"]).status == "open"
        assert client.get(f"/review/items/{veg['item_id']}").status_code == 200
        assert client.get("/stats?task=pets").status_code == 200
        assert "Stats: fruit_veg_herb" in client.get("/stats?task=pets").text


def test_s6_task_scoped_tokens(task: Task, other: Task, fake: FakeBackend, store: Store) -> None:
    scoped = bearer(store, ["classify", "read", "review"], name="veg-bot", task="fruit_veg_herb")
    wide = bearer(store, ["classify", "read"], name="all-bot")
    with make_client([task, other], fake, store) as client:
        pet = client.post("/v1/tasks/pets/classify", json={"text": "tabby"}, headers=wide).json()
        r = client.post("/v1/tasks/pets/classify", json={"text": "rex"}, headers=scoped)
        assert r.status_code == 403 and "limited to task 'fruit_veg_herb'" in r.text
        assert client.get("/v1/tasks/pets/items", headers=scoped).status_code == 403
        assert client.get(f"/v1/items/{pet['item_id']}", headers=scoped).status_code == 403
        r = client.post(f"/v1/items/{pet['item_id']}/review", json={"label": "cat"},
                        headers=scoped)
        assert r.status_code == 403
        assert [t["name"] for t in client.get("/v1/tasks", headers=scoped).json()["tasks"]] \
            == ["fruit_veg_herb"]
        assert client.post(URL, json={"text": "tomato"}, headers=scoped).status_code == 200
    assert store.check_token(scoped["Authorization"][7:]).task == "fruit_veg_herb"  # type: ignore[union-attr]


# -- S7: a valid CSRF token from another origin ----------------------------------------


def test_s7_cross_origin_form_posts_are_refused(
    task: Task, fake: FakeBackend, store: Store
) -> None:
    token = bearer(store, ["classify"])
    with make_client(task, fake, store, public_origins=("https://review.example.org",)) \
            as client:
        item = client.post(URL, json={"text": "tomato"}, headers=token).json()
        csrf = login(client, store)
        url = f"/review/items/{item['item_id']}"
        client.get(url)
        data = {"csrf": csrf, "choice": "accept"}
        for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"},
                        {"Referer": "https://evil.example/page"},
                        {"Origin": "http://testserver.evil.example"}):
            r = client.post(url, data=data, headers=headers)
            assert r.status_code == 403 and "another site" in r.text, headers
        assert store.get_item(item["item_id"]).status == "open"
        r = client.post("/logout", data={"csrf": csrf}, headers={"Origin": "https://evil.example"})
        assert r.status_code == 403
        # Its own origin (the Host it was asked under), or a configured public one, passes.
        r = client.post(url, data=data, headers={"Origin": "http://testserver"})
        assert r.status_code == 200
        assert store.get_item(item["item_id"]).status == "reviewed"
        r = client.post("/logout", data={"csrf": csrf},
                        headers={"Origin": "https://review.example.org"}, follow_redirects=False)
        assert r.status_code == 303


def test_s7_login_form_from_another_origin_is_refused(client: TestClient, store: Store) -> None:
    store.add_user("bob", "reviewer", PASSWORD)
    csrf = csrf_of(client.get("/login").text)
    r = client.post("/login", data={"username": "bob", "password": PASSWORD, "csrf": csrf},
                    headers={"Origin": "https://evil.example"}, follow_redirects=False)
    assert r.status_code == 403


# -- S8: /docs without a CDN, under the CSP ----------------------------------------------


def test_s8_docs_are_served_locally_under_the_csp(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == CSP
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    assert "<script>" not in page.text  # no inline script: the CSP would block it
    for src in ("/docs/static/swagger-ui-bundle.js", "/docs/static/swagger-ui.css",
                "/static/docs.js"):
        assert src in page.text
        asset = client.get(src)
        assert asset.status_code == 200 and len(asset.content) > 100, src
    assert client.get("/docs/static/../../etc/passwd").status_code == 404
    assert client.get("/docs/static/index.html").status_code == 404
    assert client.get("/redoc").status_code == 404


def test_s8_docs_can_be_turned_off(task: Task, fake: FakeBackend, store: Store) -> None:
    with make_client(task, fake, store, docs=False) as client:
        assert client.get("/docs").status_code == 404
        assert client.get("/docs/static/swagger-ui-bundle.js").status_code == 404
