"""Working as a team, over HTTP, on SQLite and on a real PostgreSQL: several annotators per
item, settling and adjudication, undo, quotas, search and filters, per-reviewer stats,
the API's claim/answer/adjudicate/undo, blind audit items and de-duplication."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service_support import (
    EXAMPLES,
    Clock,
    bearer,
    database,
    item_id,
    login,
    make_client,
)
from surelabel.store import Store
from surelabel.store.agreement import cohen_kappa
from surelabel.task import Task, load_task
from surelabel.testing import FakeBackend

URL = "/v1/tasks/fruit_veg_herb/classify"
PLAN = {
    "apple": [0.97, 0.02, 0.01],     # accept
    "tomato": [0.55, 0.44, 0.01],    # review
    "rhubarb": [0.7, 0.29, 0.01],    # review
    "mystery": [0.4, 0.35, 0.25],    # clarify
    "basil": [0.1, 0.35, 0.55],      # review (herb)
    "kale": [0.2, 0.75, 0.05],       # review (vegetable)
}


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    clock = Clock()
    with database(request.param, tmp_path, "team") as url:
        s = Store(url, clock=clock)
        yield s
        s.close()


@pytest.fixture
def task() -> Task:
    return load_task(EXAMPLES / "fruit_veg_herb.yaml")


@pytest.fixture
def fake() -> FakeBackend:
    return FakeBackend(plan=PLAN)


def clients(task: Task, fake: FakeBackend, store: Store, n: int, **kw: Any) -> list[TestClient]:
    return [make_client(task, fake, store, **kw) for _ in range(n)]


def post(client: TestClient, store: Store, *texts: str, **item: Any) -> list[dict[str, Any]]:
    h = bearer(store, ["classify"], name="ingest")
    r = client.post(URL, json={"items": [{"text": t, **item} for t in texts]}, headers=h)
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


def answer(client: TestClient, csrf: str, item: int, choice: str, **extra: Any) -> Any:
    client.get(f"/review/items/{item}")
    return client.post(f"/review/items/{item}", data={"csrf": csrf, "choice": choice, **extra})


def test_two_annotators_settle_by_agreement_or_adjudication(
    task: Task, fake: FakeBackend, store: Store
) -> None:
    a, b, c, d = clients(task, fake, store, 4, review={"reviews_per_item": 2})
    with a, b, c, d:
        tomato, rhubarb = post(a, store, "tomato", "rhubarb")
        assert tomato["reviews"] == {"needed": 2, "count": 0}
        ca = login(a, store, "ann")
        cb = login(b, store, "ben")
        cc = login(c, store, "cat", "adjudicator")
        cd = login(d, store, "dan", "adjudicator", tasks=["other-task"])
        # Agreement: both say vegetable -> settled.
        r = answer(a, ca, tomato["item_id"], "label:vegetable")
        assert r.status_code == 200
        page = b.get(f"/review/items/{tomato['item_id']}").text
        assert "ann" not in page and 'id="answers"' not in page  # blind to the first answer
        r = answer(b, cb, tomato["item_id"], "label:vegetable")
        assert r.status_code == 200
        done = store.get_item(tomato["item_id"])
        assert (done.status, done.settled_by, done.review_label) == (
            "reviewed", "agreement", "vegetable")
        assert done.review_action == "correct" and done.reviewer == "ann, ben"
        # A third answer is refused: the item is settled.
        r = answer(c, cc, tomato["item_id"], "label:fruit")
        assert r.status_code == 409 and "already answered" in r.text
        # Disagreement -> disputed; a reviewer cannot settle it, an adjudicator can.
        answer(a, ca, rhubarb["item_id"], "accept")
        answer(b, cb, rhubarb["item_id"], "label:vegetable")
        assert store.get_item(rhubarb["item_id"]).status == "disputed"
        mine = a.get(f"/review/items/{rhubarb['item_id']}").text
        assert "waits for an adjudicator" in mine and "<strong>fruit</strong>" in mine
        third = store.add_user("eve", "reviewer", "correct horse battery")
        assert third
        r = d.get(f"/review/items/{rhubarb['item_id']}")
        assert r.status_code == 403  # dan adjudicates another task only
        # The adjudicator sees both answers, and is served the disputed item first.
        r = c.get("/review/fruit_veg_herb/next")
        assert item_id(r) == rhubarb["item_id"]
        assert 'id="answers"' in r.text and "ann" in r.text and "ben" in r.text
        assert "your answer settles this item" in r.text
        r = c.post(f"/review/items/{rhubarb['item_id']}",
                   data={"csrf": cc, "choice": "label:vegetable"})
        assert r.status_code == 200
        settled = store.get_item(rhubarb["item_id"])
        assert (settled.status, settled.settled_by, settled.reviewer) == (
            "reviewed", "adjudication", "cat")
        assert [(x.reviewer, x.role) for x in store.reviews_of(rhubarb["item_id"])] == [
            ("ann", "review"), ("ben", "review"), ("cat", "adjudication")]
        assert cd


def test_a_reviewer_is_never_served_an_item_twice(
    task: Task, fake: FakeBackend, store: Store
) -> None:
    (a,) = clients(task, fake, store, 1, review={"reviews_per_item": 2})
    with a:
        post(a, store, "tomato", "rhubarb")
        csrf = login(a, store, "ann")
        first = item_id(a.get("/review/fruit_veg_herb/next"))
        r = a.post(f"/review/items/{first}", data={"csrf": csrf, "choice": "accept"})
        second = item_id(r)
        assert second != first
        r = a.post(f"/review/items/{second}", data={"csrf": csrf, "choice": "accept"})
        assert "No items left for you" in r.text
        assert store.claim_next("fruit_veg_herb", "ann") is None
        other = store.claim_next("fruit_veg_herb", "ben")
        assert other is not None and other.id in (first, second)


def test_undo_within_the_window(task: Task, fake: FakeBackend, store: Store) -> None:
    clock: Clock = store.clock  # type: ignore[assignment]
    a, b = clients(task, fake, store, 2, review={"reviews_per_item": 2}, undo_seconds=60)
    with a, b:
        tomato, kale = post(a, store, "tomato", "kale")
        ca = login(a, store, "ann")
        cb = login(b, store, "ben")
        answer(a, ca, tomato["item_id"], "label:herb")
        queue = a.get("/review/fruit_veg_herb").text
        assert f"Undo my last answer (item {tomato['item_id']})" in queue
        r = a.post("/review/undo", data={"csrf": ca, "task": "fruit_veg_herb"})
        assert r.status_code == 200 and item_id(r) == tomato["item_id"]
        again = store.get_item(tomato["item_id"])
        assert again.review_count == 0 and again.status == "open" and again.claimed_by == "ann"
        assert store.reviews_of(tomato["item_id"]) == []
        r = a.post(f"/review/items/{tomato['item_id']}",
                   data={"csrf": ca, "choice": "label:vegetable"})
        assert r.status_code == 200
        # Once another reviewer answered after you, your answer stands.
        answer(b, cb, tomato["item_id"], "label:vegetable")
        r = a.post("/review/undo", data={"csrf": ca})
        assert r.status_code == 409 and "answered by someone else" in r.text
        assert store.get_item(tomato["item_id"]).status == "reviewed"
        # Ben may take his back: the item reopens (the settled answer is undone too).
        r = b.post("/review/undo", data={"csrf": cb})
        assert r.status_code == 200
        back = store.get_item(tomato["item_id"])
        assert (back.status, back.review_count, back.review_label) == ("open", 1, None)
        # Past the window there is nothing to undo.
        answer(a, ca, kale["item_id"], "accept")
        clock.t += 61
        r = a.post("/review/undo", data={"csrf": ca})
        assert r.status_code == 404


def test_quota_per_reviewer(task: Task, fake: FakeBackend, store: Store) -> None:
    (a,) = clients(task, fake, store, 1)
    with a:
        post(a, store, "tomato", "rhubarb", "kale", "basil")
        store.add_user("ann", "reviewer", "correct horse battery", quota=2)
        csrf = login(a, store, "ann", create=False)
        r = a.get("/review/fruit_veg_herb/next")
        r = a.post(f"/review/items/{item_id(r)}", data={"csrf": csrf, "choice": "accept"})
        r = a.post(f"/review/items/{item_id(r)}", data={"csrf": csrf, "choice": "accept"})
        assert r.status_code == 429 and "quota of 2 answers" in r.text
        clock: Clock = store.clock  # type: ignore[assignment]
        clock.t += 86401  # a day later (and a new login: sessions last 12 hours)
        login(a, store, "ann", create=False)
        r = a.get("/review/fruit_veg_herb/next")
        assert r.status_code == 200 and "/review/items/" in str(r.url)
    # The task's default quota applies to API tokens and to accounts without their own.
    (b,) = clients(task, fake, store, 1, review={"quota": 1})
    with b:
        h = bearer(store, ["review"], name="bot")
        claimed = b.post("/v1/tasks/fruit_veg_herb/claim", json={}, headers=h).json()["item"]
        assert b.post(f"/v1/items/{claimed['item_id']}/review", json={"label": "fruit"},
                      headers=h).status_code == 200
        r = b.post("/v1/tasks/fruit_veg_herb/claim", json={}, headers=h)
        assert r.status_code == 429


def test_search_and_filters(task: Task, fake: FakeBackend, store: Store) -> None:
    (a,) = clients(task, fake, store, 1, audit=0.0)
    with a:
        items = post(a, store, "apple", "tomato", "rhubarb", "mystery", "basil", "kale")
        by_text = {i["text"]: i for i in items}
        h = bearer(store, ["read", "review"])
        base = "/v1/tasks/fruit_veg_herb/items"

        def texts(query: str) -> list[str]:
            r = a.get(f"{base}?{query}", headers=h)
            assert r.status_code == 200, r.text
            return sorted(i["text"] for i in r.json()["items"])

        assert texts("q=TOM") == ["tomato"]
        assert texts("q=a") == ["apple", "basil", "kale", "rhubarb", "tomato"]
        assert texts(f"q={by_text['kale']['item_id']}") == ["kale"]
        assert texts(f"q=%23{by_text['kale']['item_id']}") == ["kale"]
        assert texts("q=%25") == [] and texts("q=_") == []  # LIKE wildcards match literally
        assert texts("label=herb") == ["basil"]
        assert texts("label=vegetable") == ["kale"]
        assert texts("decision=clarify") == ["mystery"]
        assert texts("confidence=0.5-0.6") == ["basil", "tomato"]
        assert texts("confidence=0.9-1.0") == ["apple"]
        assert texts("decision=review&confidence=0.7-0.8") == ["kale", "rhubarb"]
        assert a.get(f"{base}?confidence=0.8-0.2", headers=h).status_code == 422
        assert a.get(f"{base}?confidence=high", headers=h).status_code == 422
        a.post(f"/v1/items/{by_text['kale']['item_id']}/review", json={"label": "vegetable"},
               headers=h)
        assert texts("reviewed=true") == ["kale"]
        assert "kale" not in texts("reviewed=false")
        assert texts("status=auto") == ["apple"]
        assert texts("audit=true") == []
        assert a.get(f"{base}?q=tom", headers=h).json()["total"] == 1
        # The queue page: the same search and filters, and "Start reviewing" keeps them.
        csrf = login(a, store, "ann")
        page = a.get("/review/fruit_veg_herb?q=rhu&state=all").text
        assert "rhubarb" in page and "tomato" not in page and "1 item match" in page
        page = a.get("/review/fruit_veg_herb?label=herb").text
        assert "basil" in page and "tomato" not in page
        assert a.get("/review/fruit_veg_herb?label=meat").status_code == 422
        assert a.get("/review/fruit_veg_herb?band=2-3").status_code == 422
        r = a.get("/review/fruit_veg_herb/next?label=herb")
        assert item_id(r) == by_text["basil"]["item_id"]
        r = a.post(f"/review/items/{item_id(r)}",
                   data={"csrf": csrf, "choice": "accept", "filters": "label=herb"})
        assert "No items left for you in this queue with these filters" in r.text
        reviewed = a.get("/review/fruit_veg_herb?state=reviewed").text
        assert "basil" in reviewed and "kale" in reviewed and "mystery" not in reviewed


def test_per_reviewer_stats_and_agreement(task: Task, fake: FakeBackend, store: Store) -> None:
    (a,) = clients(task, fake, store, 1, review={"reviews_per_item": 2})
    with a:
        items = post(a, store, "tomato", "rhubarb", "kale", "basil")
        ids = [i["item_id"] for i in items]
        ann = ["vegetable", "fruit", "vegetable", "herb"]
        ben = ["vegetable", "vegetable", "vegetable", "herb"]
        for label_a, label_b, i in zip(ann, ben, ids):
            store.claim(i, "ann")
            store.answer(i, "ann", label=label_a)
            store.answer(i, "ben", label=label_b)
        store.answer(ids[1], "cat", label="vegetable", adjudicate=True)
        h = bearer(store, ["read"])
        s = a.get("/v1/tasks/fruit_veg_herb/stats", headers=h).json()
        assert s["annotators"]["items"] == 4
        pair = s["annotators"]["pairs"][0]
        assert (pair["a"], pair["b"], pair["n"], pair["agree"]) == ("ann", "ben", 4, 0.75)
        assert pair["kappa"] == pytest.approx(cohen_kappa(ann, ben))
        reviewers = {r["reviewer"]: r for r in s["reviewers"]}
        assert reviewers["ann"]["answers"] == 4 and reviewers["cat"]["adjudications"] == 1
        assert reviewers["ann"]["with_consensus"]["rate"] == 0.75
        assert reviewers["ben"]["with_consensus"]["rate"] == 1.0
        assert reviewers["ann"]["median_seconds"] == 0.0  # claimed and answered at one instant
        # The model said fruit, fruit, vegetable, herb; the consensus is veg, veg, veg, herb.
        assert reviewers["ann"]["with_model"]["rate"] == 0.75
        per_label = {x["label"]: x for x in s["annotators"]["per_label"]}
        assert per_label["vegetable"]["consensus"] == 3 and per_label["vegetable"]["model_yes"] == 1
        assert per_label["herb"]["alpha"] == pytest.approx(1.0)
        login(a, store, "admin", "admin")
        page = a.get("/stats").text
        for part in ('id="kappa"', 'id="per-label"', 'id="reviewers"', "ann · ben",
                     'id="history-chart"', 'id="audit-chart"'):
            assert part in page, part


def test_api_claim_answer_adjudicate_undo(task: Task, fake: FakeBackend, store: Store) -> None:
    (a,) = clients(task, fake, store, 1, review={"reviews_per_item": 2})
    with a:
        post(a, store, "tomato")
        r1 = bearer(store, ["review", "read"], name="r1")
        r2 = bearer(store, ["review"], name="r2")
        judge = bearer(store, ["review", "adjudicate"], name="judge")
        claim = "/v1/tasks/fruit_veg_herb/claim"
        got = a.post(claim, json={}, headers=r1).json()["item"]
        assert got["text"] == "tomato"
        assert a.post(claim, json={}, headers=r2).json()["item"] is None  # leased to r1
        url = f"/v1/items/{got['item_id']}"
        assert a.post(f"{url}/review", json={"label": "fruit"}, headers=r2).status_code == 409
        assert a.post(f"{url}/review", json={"label": "fruit"}, headers=r1).status_code == 200
        assert a.post(f"{url}/review", json={"label": "herb"}, headers=r1).status_code == 409
        assert a.post(claim, json={}, headers=r1).json()["item"] is None  # answered already
        assert a.post(claim, json={}, headers=r2).json()["item"]["item_id"] == got["item_id"]
        r = a.post(f"{url}/review", json={"label": "vegetable"}, headers=r2)
        assert r.json()["status"] == "disputed"
        assert a.post(f"{url}/adjudicate", json={"label": "herb"},
                      headers=r1).status_code == 403
        assert a.post(claim, json={"adjudicate": True}, headers=r2).status_code == 403
        assert a.post(claim, json={"adjudicate": True},
                      headers=judge).json()["item"]["item_id"] == got["item_id"]
        done = a.post(f"{url}/adjudicate", json={"label": "vegetable"}, headers=judge).json()
        assert done["review"]["settled_by"] == "adjudication"
        detail = a.get(url, headers=r1).json()
        assert [x["reviewer"] for x in detail["answers"]] == ["token:r1", "token:r2",
                                                              "token:judge"]
        undone = a.post("/v1/reviews/undo", headers=judge).json()
        assert undone["status"] == "disputed"
        assert a.post("/v1/reviews/undo", headers=judge).status_code == 404


def test_audit_items_are_answered_blind(task: Task, fake: FakeBackend, store: Store) -> None:
    (a,) = clients(task, fake, store, 1, audit=1.0)
    with a:
        apple, tomato = post(a, store, "apple", "tomato")
        assert apple["audit"] and apple["status"] == "open"  # accepted, yet in the queue
        login(a, store, "ann")
        page = a.get(f"/review/items/{apple['item_id']}").text
        assert 'id="blind"' in page and "Model says" not in page and 'value="accept"' not in page
        assert "0.970" not in page and 'value="label:fruit"' in page
        r = a.get("/review/fruit_veg_herb?audit=yes")
        assert "apple" in r.text and "tomato" in r.text
    counts = store.count_items("fruit_veg_herb")
    assert counts["audit"] == 2 and counts["accept"] == 1 and counts["auto"] == 0
    assert tomato["audit"]


def test_audit_share_is_a_random_share_of_all_decisions(
    task: Task, store: Store
) -> None:
    fake = FakeBackend(keywords={"fruit": ["apple", "pear"], "vegetable": ["kale"]}, noise=4.0)
    (a,) = clients(task, fake, store, 1, audit=0.25, audit_seed=7, batch_limit=32)
    with a:
        texts = [f"item {i} {'apple' if i % 3 else 'kale'}" for i in range(160)]
        for start in range(0, 160, 32):
            post(a, store, *texts[start:start + 32])
    items = list(store.all_items("fruit_veg_herb"))
    audit = [i for i in items if i.audit]
    assert 0.15 < len(audit) / len(items) < 0.35
    assert {i.decision for i in audit} >= {"accept", "review"}
    assert all(i.status == "open" for i in audit)


@pytest.mark.parametrize("dedupe", [True, False])
def test_dedupe_by_content_hash(task: Task, fake: FakeBackend, store: Store, dedupe: bool) -> None:
    (a,) = clients(task, fake, store, 1, review={"dedupe": dedupe})
    with a:
        first = post(a, store, "tomato")[0]
        calls = fake.calls
        again = post(a, store, "tomato", "tomato ")
        assert (again[0]["item_id"] == first["item_id"]) is dedupe
        assert again[1]["item_id"] != first["item_id"]  # another text
        with_id = post(a, store, "tomato", id="t-9")[0]
        assert with_id["item_id"] != first["item_id"]  # an id is its own key
    assert (fake.calls - calls == 2) is dedupe
    assert store.count_matching("fruit_veg_herb") == (3 if dedupe else 4)
