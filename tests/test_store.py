"""The review store on SQLite and on a real PostgreSQL (``SURELABEL_TEST_PG_URL``).

Locally the PostgreSQL cases skip when the URL is unset; in CI (``CI=true``)
``scripts/ci-services.sh`` sets it, and a missing URL fails the run instead of skipping.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text

from support import pg_schema_url
from surelabel.store import ConflictError, NotFoundError, Store
from surelabel.store.schema import metadata


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a throw-away PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    with pg_schema_url("t") as url:
        yield url


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(db_url: str, clock: Clock) -> Iterator[Store]:
    s = Store(db_url, clock=clock)
    yield s
    s.close()


def record(text: str, confidence: float, *, id: Any = None, label: str = "fruit",
           decision: str = "review") -> dict[str, Any]:
    other = "vegetable" if label != "vegetable" else "fruit"
    return {
        "id": id, "text": text, "label": label, "confidence": confidence,
        "probabilities": {label: confidence, other: 1 - confidence},
        "decision": decision, "reason": "looks like it", "method": "exact",
        "model": "fake", "error": None,
    }


def test_migrations_match_schema_and_are_idempotent(store: Store, db_url: str) -> None:
    assert store.migrate() == []  # already applied on open
    again = Store(db_url)
    assert again.migrate() == []
    again.close()
    insp = inspect(store.engine)
    for table in metadata.sorted_tables:
        got = {c["name"]: c["nullable"] for c in insp.get_columns(table.name)}
        assert got == {c.name: c.nullable for c in table.columns}, table.name
        indexes = {(i["name"], tuple(i["column_names"])) for i in insp.get_indexes(table.name)}
        wanted = {(i.name, tuple(c.name for c in i.columns)) for i in table.indexes}
        assert wanted <= indexes, table.name


def test_sqlite_file_uses_wal(tmp_path: Path) -> None:
    s = Store(f"sqlite:///{tmp_path / 'w.db'}")
    with s.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    s.close()


def test_add_item_is_idempotent_by_client_id(store: Store) -> None:
    first, created = store.add_item("t", record("lemon", 0.7, id="c-1"), calibration="cal-1")
    assert created
    again, created_again = store.add_item("t", record("something else", 0.2, id="c-1"))
    assert not created_again
    assert again.id == first.id and again.text == "lemon"
    assert store.find_item("t", "c-1") == first
    # The same client id in another task is another item; no id means always new.
    other, created_other = store.add_item("u", record("lemon", 0.7, id="c-1"))
    assert created_other and other.id != first.id
    a, _ = store.add_item("t", record("x", 0.6))
    b, _ = store.add_item("t", record("x", 0.6))
    assert a.id != b.id
    got = store.get_item(first.id).to_dict()
    assert got["calibration_version"] == "cal-1" and got["calibration"] == "task"
    assert got["label"] == "fruit" and got["status"] == "open"
    assert got["probabilities"] == {"fruit": 0.7, "vegetable": pytest.approx(0.3)}


def test_status_follows_decision(store: Store) -> None:
    auto, _ = store.add_item("t", record("apple", 0.99, decision="accept"))
    err, _ = store.add_item("t", {"id": None, "text": " ", "error": "empty text"})
    assert auto.status == "auto" and err.status == "error"
    assert store.count_items("t")["accept"] == 1
    assert store.count_items("t")["error"] == 1


def test_queue_order_and_filters(store: Store, clock: Clock) -> None:
    for text_, conf in [("a", 0.8), ("b", 0.55), ("c", 0.7)]:
        store.add_item("t", record(text_, conf))
        clock.t += 1
    store.add_item("t", record("d", 0.3, decision="clarify"))
    store.add_item("t", record("e", 0.95, decision="accept"))
    by_conf = [i.text for i in store.list_items("t", status="open")]
    assert by_conf == ["d", "b", "c", "a"]
    by_age = [i.text for i in store.list_items("t", status="open", order="oldest")]
    assert by_age == ["a", "b", "c", "d"]
    assert [i.text for i in store.list_items("t", decision="review", status="open")] == [
        "b", "c", "a"]
    counts = store.count_items("t")
    assert counts["review"] == 3 and counts["clarify"] == 1 and counts["accept"] == 1
    assert counts["open"] == 4 and counts["auto"] == 1


def test_claim_lease_and_expiry(store: Store, clock: Clock) -> None:
    store.add_item("t", record("low", 0.55))
    store.add_item("t", record("high", 0.8))
    alice = store.claim_next("t", "alice", lease=60)
    bob = store.claim_next("t", "bob", lease=60)
    assert alice is not None and bob is not None
    assert alice.text == "low" and bob.text == "high"
    # alice reloading keeps her item; carol finds nothing free
    again = store.claim_next("t", "alice", lease=60)
    assert again is not None and again.id == alice.id
    assert store.claim_next("t", "carol", lease=60) is None
    with pytest.raises(ConflictError, match="claimed by alice"):
        store.answer(alice.id, "carol", label="fruit")
    clock.t += 61  # alice's lease ran out
    carol = store.claim_next("t", "carol", lease=60)
    assert carol is not None and carol.id == alice.id
    assert not store.claim(alice.id, "alice")


def test_answer_once_no_lost_update(store: Store) -> None:
    item, _ = store.add_item("t", record("tomato", 0.6))
    done = store.answer(item.id, "alice", label="vegetable")
    assert done.status == "reviewed" and done.review_action == "correct"
    assert done.review_label == "vegetable" and done.reviewer == "alice"
    with pytest.raises(ConflictError, match="already answered by alice"):
        store.answer(item.id, "bob", label="fruit")
    assert store.get_item(item.id).review_label == "vegetable"
    with pytest.raises(NotFoundError):
        store.answer(10_000, "bob", label="fruit")
    other, _ = store.add_item("t", record("kiwi", 0.6))
    assert store.answer(other.id, "bob", label="fruit").review_action == "accept"
    third, _ = store.add_item("t", record("?", 0.4, decision="clarify"))
    clar = store.answer(third.id, "bob", clarify=True, note="what is '?'")
    assert clar.review_action == "clarify" and clar.review_label is None
    assert clar.to_dict()["review"]["note"] == "what is '?'"


def test_concurrent_answers_only_one_wins(store: Store) -> None:
    item, _ = store.add_item("t", record("plum", 0.6))
    outcomes: list[str] = []
    barrier = threading.Barrier(6)

    def reviewer(name: str) -> None:
        barrier.wait()
        try:
            store.answer(item.id, name, label="fruit")
            outcomes.append("ok")
        except ConflictError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=reviewer, args=(f"r{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict"] * 5 + ["ok"]


def test_concurrent_claims_never_share(store: Store) -> None:
    for i in range(4):
        store.add_item("t", record(f"item {i}", 0.6 + i / 100))
    got: dict[str, int | None] = {}
    barrier = threading.Barrier(4)

    def claim(name: str) -> None:
        barrier.wait()
        item = store.claim_next("t", name)
        got[name] = None if item is None else item.id

    threads = [threading.Thread(target=claim, args=(f"r{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [v for v in got.values() if v is not None]
    assert len(ids) == 4 and len(set(ids)) == 4


def test_stats_agreement_by_band(store: Store) -> None:
    a, _ = store.add_item("t", record("a", 0.55))
    b, _ = store.add_item("t", record("b", 0.65))
    c, _ = store.add_item("t", record("c", 0.95, decision="accept"))
    d, _ = store.add_item("t", record("d", 0.3, decision="clarify"))
    store.answer(a.id, "r", label="vegetable")
    store.answer(b.id, "r", label="fruit")
    store.answer(c.id, "r", label="fruit")
    store.answer(d.id, "r", clarify=True, note="?")
    s = store.stats("t")
    assert s["reviews"]["total"] == 4 and s["reviews"]["last_hour"] == 4
    assert s["reviews"]["actions"] == {"accept": 2, "correct": 1, "clarify": 1}
    bins = {(b_["low"], b_["high"]): b_ for b_ in s["agreement_by_confidence"]}
    assert bins[(0.5, 0.6)]["n"] == 1 and bins[(0.5, 0.6)]["rate"] == 0.0
    assert bins[(0.6, 0.7)]["rate"] == 1.0 and bins[(0.9, 1.0)]["n"] == 1
    assert s["agreement_by_band"]["review"] == {"n": 2, "agree": 1, "rate": 0.5}
    assert s["agreement_by_band"]["accept"]["rate"] == 1.0


def test_users_tokens_sessions(store: Store, clock: Clock) -> None:
    password = store.add_user("alice", "reviewer")
    assert len(password) >= 12
    with pytest.raises(Exception, match="already exists"):
        store.add_user("alice")
    assert store.authenticate("alice", password) is not None
    assert store.authenticate("alice", password + "x") is None
    assert store.authenticate("nobody", password) is None
    with store.engine.connect() as conn:
        stored = conn.execute(text("SELECT password_hash FROM users")).scalar()
    assert password not in stored and stored.startswith("scrypt$")

    token = store.create_token("bot", ["classify"])
    with store.engine.connect() as conn:
        stored_token = conn.execute(text("SELECT token_hash FROM tokens")).scalar()
    assert token not in stored_token
    found = store.check_token(token)
    assert found is not None and found.scopes == ("classify",)
    assert store.check_token(token + "x") is None
    assert store.revoke_tokens("bot") == 1
    assert store.check_token(token) is None

    user = store.authenticate("alice", password)
    assert user is not None
    cookie, session = store.create_session(user, ttl=100)
    got = store.get_session(cookie)
    assert got is not None and got.user.name == "alice" and got.csrf == session.csrf
    clock.t += 101
    assert store.get_session(cookie) is None


def test_untrusted_text_is_stored_verbatim(store: Store) -> None:
    nasty = "'); DROP TABLE items; -- <script>alert(1)</script>"
    item, _ = store.add_item("t", record(nasty, 0.6, id=nasty))
    assert store.get_item(item.id).text == nasty
    assert store.find_item("t", nasty) is not None
    assert json.loads(json.dumps(store.get_item(item.id).record))["text"] == nasty


def test_package_names_load_on_first_use() -> None:
    """``surelabel.store`` exports one definition of each name, importing SQLAlchemy only
    when a name that needs it is used (the CLI reads the roles and scopes without it)."""
    import surelabel.store as pkg
    from surelabel.store import auth, base, items, repository, roles

    assert pkg.ROLES is roles.ROLES and pkg.SCOPES is roles.SCOPES
    assert pkg.Store is repository.Store and pkg.Item is items.Item and pkg.User is auth.User
    assert pkg.ConflictError is base.ConflictError and pkg.ORDERS is items.ORDERS
    assert all(getattr(pkg, name) is not None for name in pkg.__all__)
    assert set(pkg.__all__) <= set(dir(pkg))
    with pytest.raises(AttributeError):
        _ = pkg.no_such_name
    code = ("import sys, surelabel.store; from surelabel.store.roles import ROLES, SCOPES; "
            "assert 'sqlalchemy' not in sys.modules, 'sqlalchemy was imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_migration_from_the_one_answer_schema_keeps_its_answers(db_url: str) -> None:
    """A database made by m001 alone, with a settled item and a reviewer, upgrades: the
    answer becomes the item's first review and the reviewer keeps every task."""
    from sqlalchemy import create_engine

    from surelabel.store.base import normalize_url
    from surelabel.store.migrations import MIGRATIONS, _applied

    engine = create_engine(normalize_url(db_url))
    with engine.begin() as conn:
        _applied.create(conn, checkfirst=True)
        MIGRATIONS[0][1](conn)
        conn.execute(_applied.insert().values(name=MIGRATIONS[0][0], applied_at=0.0))
        conn.execute(text(
            "INSERT INTO items (task, text, label, confidence, decision, record, status, "
            "created_at, review_action, review_label, reviewer, reviewed_at) VALUES "
            "('t', 'kiwi', '\"fruit\"', 0.6, 'review', '{\"label\": \"fruit\"}', "
            "'reviewed', 1.0, 'accept', '\"fruit\"', 'old-timer', 2.0)"))
        conn.execute(text("INSERT INTO users (name, role, password_hash, created_at) "
                          "VALUES ('old-timer', 'reviewer', 'x', 0.0)"))
    engine.dispose()
    store = Store(db_url)
    try:
        (item,) = list(store.all_items("t"))
        assert item.review_count == 1 and item.settled_by == "agreement"
        (review,) = store.reviews_of(item.id)
        assert (review.reviewer, review.label, review.action) == ("old-timer", "fruit", "accept")
        user = store.list_users()[0]
        assert user.can_review("any-task") and not user.can_adjudicate("any-task")
        assert store.stats("t")["reviews"]["total"] == 1
    finally:
        store.close()


def test_two_reviewers_settle_and_disagreements_wait(store: Store) -> None:
    item, _ = store.add_item("t", record("plum", 0.6), reviews_needed=2)
    first = store.answer(item.id, "alice", label="fruit")
    assert first.status == "open" and first.review_count == 1
    assert first.to_dict()["review"] is None
    with pytest.raises(ConflictError, match="alice already answered"):
        store.answer(item.id, "alice", label="vegetable")
    second = store.answer(item.id, "bob", label="vegetable")
    assert second.status == "disputed"
    with pytest.raises(ConflictError, match="waits for an adjudicator"):
        store.answer(item.id, "carol", label="fruit")
    with pytest.raises(ConflictError, match="already answered"):
        store.answer(item.id, "bob", label="fruit", adjudicate=True)
    done = store.answer(item.id, "carol", label="vegetable", adjudicate=True)
    assert (done.status, done.settled_by, done.review_label, done.review_action) == (
        "reviewed", "adjudication", "vegetable", "correct")
    both, _ = store.add_item("t", record("fig", 0.6), reviews_needed=2)
    store.answer(both.id, "alice", clarify=True, note="which fig?")
    agreed = store.answer(both.id, "bob", clarify=True, note="tree or fruit?")
    assert agreed.status == "reviewed" and agreed.review_action == "clarify"
    assert agreed.review_note == "which fig? | tree or fruit?"


def test_concurrent_second_answers_only_one_counts(store: Store) -> None:
    """Six reviewers race for the last answer an item needs: exactly one gets it."""
    item, _ = store.add_item("t", record("plum", 0.6), reviews_needed=2)
    store.answer(item.id, "first", label="fruit")
    outcomes: list[str] = []
    barrier = threading.Barrier(6)

    def reviewer(name: str) -> None:
        barrier.wait()
        try:
            store.answer(item.id, name, label="fruit")
            outcomes.append("ok")
        except ConflictError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=reviewer, args=(f"r{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict"] * 5 + ["ok"]
    done = store.get_item(item.id)
    assert done.review_count == 2 and len(store.reviews_of(item.id)) == 2
    assert done.status == "reviewed"


def test_undo_last_answer(store: Store, clock: Clock) -> None:
    item, _ = store.add_item("t", record("apple", 0.95, decision="accept"))
    assert item.status == "auto"
    store.answer(item.id, "alice", label="vegetable")
    back = store.undo_last("alice", within=60)
    assert back.status == "auto" and back.review_count == 0 and back.claimed_by is None
    other, _ = store.add_item("t", record("pear", 0.6))
    store.answer(other.id, "alice", label="fruit")
    clock.t += 61
    with pytest.raises(NotFoundError, match="nothing to undo"):
        store.undo_last("alice", within=60)


def test_task_roles_and_token_tasks(store: Store) -> None:
    store.add_user("ann", "reviewer", "x" * 12, tasks=["a", "b"], quota=5)
    store.add_user("adj", "adjudicator", "x" * 12)
    store.add_user("root", "admin", "x" * 12)
    ann, adj, root = (store.get_user(n) for n in ("ann", "adj", "root"))
    assert ann.can_review("a") and not ann.can_review("c") and not ann.can_adjudicate("a")
    assert ann.quota("b") == 5 and ann.quota("c") is None
    assert adj.can_adjudicate("anything") and root.can_adjudicate("c") and root.is_admin
    store.grant("ann", "c", "adjudicator")
    assert store.get_user("ann").can_adjudicate("c")
    store.revoke_grant("ann", "a")
    assert not store.get_user("ann").can_review("a")
    with pytest.raises(NotFoundError):
        store.revoke_grant("ann", "a")
    with pytest.raises(Exception, match="unknown task role"):
        store.grant("ann", "a", "admin")
    token = store.create_token("bot", ["classify"], task="a")
    found = store.check_token(token)
    assert found is not None and found.allows("a") and not found.allows("b")
    store.revoke_token_id(found.id)
    assert store.check_token(token) is None


def test_calibration_versions(store: Store) -> None:
    data = {"format": "surelabel-calibration", "n_fitted": 12, "calibrator": {"method": "t"}}
    v1, new = store.add_calibration("t", data, source="file", actor="me", method="t",
                                    n_fitted=12)
    assert new and store.active_calibration_id("t") == v1
    assert store.add_calibration("t", data, source="file", actor="me") == (v1, False)
    v2, _ = store.add_calibration("t", {**data, "n_fitted": 20}, source="refit", actor="me",
                                  method="t", n_fitted=20, heldout_ece=0.05)
    assert store.active_calibration_id("t") == v2
    assert store.rollback_calibration("t", actor="me") == v1
    assert store.rollback_calibration("t", actor="me") is None
    with pytest.raises(ConflictError):
        store.rollback_calibration("t", actor="me")
    store.activate_calibration("t", v2, actor="me")
    assert store.calibration_summary("t")["active"]["heldout_ece"] == 0.05
    with pytest.raises(NotFoundError):
        store.activate_calibration("t", 999, actor="me")
    assert store.get_calibration("t", v1).data == data
    assert [v.id for v in store.list_calibrations("t")] == [v1, v2]
