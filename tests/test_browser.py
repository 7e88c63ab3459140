"""Reviewers, an adjudicator and an admin in a real browser: Debian's Chromium, headless,
driven by Playwright, against the service on a real uvicorn on 127.0.0.1, with SQLite and
with PostgreSQL.

Never downloads a browser: it uses /usr/bin/chromium (installed by scripts/ci-services.sh).
Skips when Chromium is missing locally; fails in CI (CI=true). With
``SURELABEL_SCREENSHOTS=DIR`` the screenshots of docs/SERVICE.md are written to DIR
(``SURELABEL_SCREENSHOTS=docs/img pytest tests/test_browser.py`` remakes them).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service_support import NEGATIVE, PASSWORD, POSITIVE, LiveServer, database, service_settings
from surelabel.server import create_app
from surelabel.store import Store
from surelabel.task import load_task
from surelabel.testing import FakeBackend

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("SURELABEL_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
EVIL = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">evil'
PLAN = {
    "mystery": [0.4, 0.35, 0.25],   # clarify band, least confident
    "tomato": [0.55, 0.44, 0.01],   # review
    "rhubarb": [0.7, 0.29, 0.01],   # review
    EVIL: [0.8, 0.19, 0.01],        # review, most confident of the open ones
    "apple": [0.97, 0.02, 0.01],    # accepted, not in the queue
    "kale": [0.3, 0.65, 0.05],      # review
    "basil": [0.2, 0.2, 0.6],       # review
}


def chromium() -> str:
    if Path(CHROMIUM).is_file() or shutil.which(CHROMIUM):
        return CHROMIUM
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{CHROMIUM} not found in CI (scripts/ci-services.sh installs it)")
    pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")


def shots_dir(tmp_path: Path) -> Path:
    where = os.environ.get("SURELABEL_SCREENSHOTS")
    out = Path(where) if where else tmp_path / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database(request.param, tmp_path, "browser") as url:
        yield url


def serve(db: str, **review: Any) -> tuple[LiveServer, Store]:
    store = Store(db)
    task = load_task(REPO / "examples" / "fruit_veg_herb.yaml")
    app = create_app(task, FakeBackend(plan=PLAN), store,
                     settings=service_settings(task, review=review))
    return LiveServer(app), store


def log_in(page: Any, url: str, name: str, password: str) -> None:
    page.goto(f"{url}/login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password)
    with page.expect_navigation():
        page.click("button[type=submit]")


def test_reviewer_works_through_the_queue(db: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    exe = chromium()
    server, store = serve(db)
    shots = shots_dir(tmp_path)
    with server:
        token = store.create_token("ingest", ["classify"])
        items = [{"text": t} for t in ("apple", "rhubarb", "tomato", "mystery", EVIL)]
        r = httpx.post(f"{server.url}/v1/tasks/fruit_veg_herb/classify", json={"items": items},
                       headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 200, r.text
        store.add_user("alice", "reviewer", PASSWORD)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=exe, headless=True, args=FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 900})
                dialogs: list[str] = []
                page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

                page.goto(f"{server.url}/review/fruit_veg_herb")
                assert "/login" in page.url
                page.fill("input[name=username]", "alice")
                page.fill("input[name=password]", PASSWORD)
                page.click("button[type=submit]")
                page.wait_for_url("**/review/fruit_veg_herb")
                assert "open 4" in page.inner_text("ul.counts")
                page.screenshot(path=str(shots / "queue.png"))

                # Enter starts reviewing; least confident first: "mystery" (clarify band).
                page.keyboard.press("Enter")
                page.wait_for_url("**/review/items/*")
                assert page.inner_text("#item-text") == "mystery"
                assert page.locator("table.bars tr").count() == 3
                page.keyboard.press("c")  # focus the note, type, Ctrl+Enter sends "clarify"
                page.keyboard.type("Is this a fruit at all?")
                with page.expect_navigation():
                    page.keyboard.press("Control+Enter")

                assert page.inner_text("#item-text") == "tomato"  # the next item opened
                page.screenshot(path=str(shots / "item.png"))
                with page.expect_navigation():
                    page.keyboard.press("2")  # second label: vegetable

                assert page.inner_text("#item-text") == "rhubarb"
                with page.expect_navigation():
                    page.keyboard.press("a")  # accept the model's label
                # "u" takes the answer back: rhubarb opens again, leased to alice.
                assert page.inner_text("#item-text") == EVIL
                with page.expect_navigation():
                    page.keyboard.press("u")
                assert page.inner_text("#item-text") == "rhubarb"
                with page.expect_navigation():
                    page.keyboard.press("a")

                # The hostile text is shown as text, and nothing in it ran.
                assert page.inner_text("#item-text") == EVIL
                assert page.evaluate("window.__pwned") is None
                assert dialogs == []

                page.goto(f"{server.url}/stats")
                assert page.locator("#agreement-chart rect").count() >= 6
            finally:
                browser.close()
    answers = {i.text: (i.review_action, i.review_label, i.review_note, i.reviewer)
               for i in store.reviewed("fruit_veg_herb")}
    store.close()
    assert answers == {
        "mystery": ("clarify", None, "Is this a fruit at all?", "alice"),
        "tomato": ("correct", "vegetable", None, "alice"),
        "rhubarb": ("accept", "fruit", None, "alice"),
    }
    for name in ("queue", "item"):
        assert (shots / f"{name}.png").stat().st_size > 1000


def test_team_admin_annotators_and_adjudication(db: str, tmp_path: Path) -> None:
    """An admin creates a reviewer and uploads a file; the reviewer's first login asks for
    a new password; two reviewers disagree; the adjudicator settles it; the admin exports
    CSV; the stats show the agreement; the API docs render under the CSP."""
    from playwright.sync_api import sync_playwright

    exe = chromium()
    server, store = serve(db, reviews_per_item=2, audit=0.0)
    shots = shots_dir(tmp_path)
    upload = tmp_path / "new-items.jsonl"
    upload.write_text("".join(json.dumps({"id": t, "text": t}) + "\n"
                              for t in ("tomato", "kale", "basil", "apple")))
    store.add_user("root", "admin", PASSWORD)
    store.add_user("cy", "reviewer", PASSWORD)
    store.add_user("dee", "adjudicator", PASSWORD)
    with server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True, args=FLAGS)
        violations: list[str] = []
        try:
            ctx = browser.new_context(viewport={"width": 1100, "height": 800},
                                      accept_downloads=True)
            admin = ctx.new_page()
            admin.on("console", lambda m: violations.append(m.text)
                     if "Content Security Policy" in m.text else None)
            log_in(admin, server.url, "root", PASSWORD)
            # Users: add a reviewer for this task; the one-time password is shown once.
            admin.goto(f"{server.url}/admin/users")
            admin.fill("#add-user input[name=name]", "bea")
            admin.check("#add-user input[value=fruit_veg_herb]")
            with admin.expect_navigation():
                admin.click("#add-user button[type=submit]")
            one_time = admin.inner_text("#secret").strip()
            assert len(one_time) >= 12
            admin.screenshot(path=str(shots / "admin-users.png"))
            # Tokens: one limited to the task.
            admin.goto(f"{server.url}/admin/tokens")
            admin.fill("#create-token input[name=name]", "veg-bot")
            admin.select_option("#create-token select[name=task]", "fruit_veg_herb")
            with admin.expect_navigation():
                admin.click("#create-token button[type=submit]")
            assert admin.inner_text("#secret").startswith("sl_")
            assert "fruit_veg_herb" in admin.inner_text("#tokens")
            # Upload: the file is classified through the queue, with progress.
            admin.goto(f"{server.url}/admin/upload")
            admin.set_input_files("#upload input[type=file]", str(upload))
            with admin.expect_navigation():
                admin.click("#upload button[type=submit]")
            admin.wait_for_selector('#state[data-state="done"]', timeout=30_000)
            assert "4 new" in admin.inner_text("#state")
            admin.screenshot(path=str(shots / "admin-upload.png"))

            # bea: the one-time password leads to the password form first.
            bea = ctx.browser.new_context(viewport={"width": 1100, "height": 800}).new_page() \
                if ctx.browser else ctx.new_page()
            log_in(bea, server.url, "bea", one_time)
            assert "/account/password" in bea.url
            bea.fill("input[name=current]", one_time)
            bea.fill("input[name=new]", "bea's own passphrase")
            bea.fill("input[name=repeat]", "bea's own passphrase")
            with bea.expect_navigation():
                bea.click("#password-form button[type=submit]")
            assert bea.url.endswith("/review")
            bea.goto(f"{server.url}/review/fruit_veg_herb?q=kale&state=all")
            assert "1 item matches" in bea.inner_text("#found")
            bea.goto(f"{server.url}/review/fruit_veg_herb")
            bea.keyboard.press("Enter")
            bea.wait_for_url("**/review/items/*")
            first = bea.inner_text("#item-text")
            with bea.expect_navigation():
                bea.keyboard.press("1")  # fruit

            # cy disagrees on the same item: it becomes disputed.
            cy = browser.new_context().new_page()
            log_in(cy, server.url, "cy", PASSWORD)
            cy.goto(f"{server.url}/review/fruit_veg_herb?q={first}&state=all")
            with cy.expect_navigation():
                cy.click("#items tbody a")
            assert "ann" not in cy.content()
            with cy.expect_navigation():
                cy.keyboard.press("3")  # herb
            item = next(i for i in store.all_items("fruit_veg_herb") if i.text == first)
            assert item.status == "disputed"

            # dee, the adjudicator, gets the disputed item first and settles it.
            dee = browser.new_context(viewport={"width": 1100, "height": 800}).new_page()
            log_in(dee, server.url, "dee", PASSWORD)
            dee.goto(f"{server.url}/review/fruit_veg_herb")
            dee.keyboard.press("Enter")
            dee.wait_for_url(f"**/review/items/{item.id}*")
            assert "bea" in dee.inner_text("#answers") and "cy" in dee.inner_text("#answers")
            dee.screenshot(path=str(shots / "adjudicate.png"))
            with dee.expect_navigation():
                dee.keyboard.press("3")  # herb settles it
            settled = store.get_item(item.id)
            assert (settled.status, settled.settled_by, settled.review_label) == (
                "reviewed", "adjudication", "herb")

            # Export: the settled rows as CSV, downloaded from the export page.
            admin.goto(f"{server.url}/admin/export")
            admin.select_option("#export select[name=which]", "reviewed")
            admin.select_option("#export select[name=format]", "csv")
            with admin.expect_download() as dl:
                admin.click("#export button[type=submit]")
            saved = tmp_path / "export.csv"
            dl.value.save_as(saved)
            rows = list(csv.DictReader(io.StringIO(saved.read_text())))
            assert [(r["text"], r["label"], r["settled_by"]) for r in rows] == [
                (first, "herb", "adjudication")]

            admin.goto(f"{server.url}/stats")
            assert "bea · cy" in admin.inner_text("#kappa")
            assert admin.locator("#audit-chart").count() == 1
            admin.screenshot(path=str(shots / "stats.png"))

            admin.goto(f"{server.url}/docs")
            admin.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
            assert "surelabel review service" in admin.inner_text(".swagger-ui .info .title")
            assert violations == []
        finally:
            browser.close()
    store.close()
    for name in ("admin-users", "admin-upload", "adjudicate", "stats"):
        assert (shots / f"{name}.png").stat().st_size > 1000


def test_stats_page_after_a_refit(db: str, tmp_path: Path, data_dir: Path) -> None:
    """The stats page of a task whose calibration was refitted from reviews: the active
    version, its held-out ECE, the accept threshold, the audit chart with intervals."""
    from playwright.sync_api import sync_playwright

    exe = chromium()
    store = Store(db)
    task = load_task(REPO / "bench" / "tasks" / "sst2.yaml")
    fake = FakeBackend(keywords={"positive": POSITIVE, "negative": NEGATIVE}, noise=3.0)
    app = create_app(task, fake, store, settings=service_settings(
        task, audit=0.5, audit_seed=3, review={"refit_every": 0, "target_error": 0.2,
                                               "delta": 0.2}))
    rows = [json.loads(x) for x in
            (data_dir / "sst2_dev.jsonl").read_text().splitlines()[:160]]
    gold = {r["text"]: r["label"] for r in rows}
    token = store.create_token("ops", ["classify", "review", "admin"])
    h = {"Authorization": f"Bearer {token}"}
    store.add_user("root", "admin", PASSWORD)
    shots = shots_dir(tmp_path)
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        for start in range(0, len(rows), 32):
            batch = [{"text": r["text"]} for r in rows[start:start + 32]]
            assert http.post("/v1/tasks/sst2/classify", json={"items": batch},
                             headers=h).status_code == 200
        for _ in range(90):
            item = http.post("/v1/tasks/sst2/claim", json={}, headers=h).json()["item"]
            http.post(f"/v1/items/{item['item_id']}/review",
                      json={"label": gold[item["text"]]}, headers=h)
        assert http.post("/v1/tasks/sst2/calibrations/refit", headers=h).status_code == 200
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=exe, headless=True, args=FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 900})
                log_in(page, server.url, "root", PASSWORD)
                page.goto(f"{server.url}/stats")
                assert "version 1" in page.inner_text("#calibration")
                assert page.inner_text("#heldout-ece") != "–"
                assert page.inner_text("#guaranteed-error") == "20%"
                assert page.locator("#audit-chart line.whisker").count() >= 2
                assert page.locator("#history-chart circle").count() >= 2
                page.locator("#calibration").screenshot(path=str(shots / "calibration.png"))
                page.locator("#audit-chart").screenshot(path=str(shots / "audit.png"))
                with page.expect_navigation():
                    page.click("#rollback")
                assert "No calibration is applied" in page.inner_text("#calibration")
            finally:
                browser.close()
    assert store.active_calibration_id("sst2") is None
    store.close()
