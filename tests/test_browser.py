"""A reviewer in a real browser: Debian's Chromium, headless, driven by Playwright, against
the service on a real uvicorn on 127.0.0.1.

Never downloads a browser: it uses /usr/bin/chromium (installed by scripts/ci-services.sh).
Skips when Chromium is missing locally; fails in CI (CI=true).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from surelabel.server import Settings, create_app
from surelabel.store import Store
from surelabel.task import load_task
from surelabel.testing import FakeBackend

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("SURELABEL_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
EVIL = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">evil'


def chromium() -> str:
    if Path(CHROMIUM).is_file() or shutil.which(CHROMIUM):
        return CHROMIUM
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{CHROMIUM} not found in CI (scripts/ci-services.sh installs it)")
    pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")


class LiveServer:
    """uvicorn serving an app on a free loopback port, in a thread."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[LiveServer, Store]]:
    store = Store(f"sqlite:///{tmp_path / 'browser.db'}")
    fake = FakeBackend(plan={
        "mystery": [0.4, 0.35, 0.25],   # clarify band, least confident
        "tomato": [0.55, 0.44, 0.01],   # review
        "rhubarb": [0.7, 0.29, 0.01],   # review
        EVIL: [0.8, 0.19, 0.01],        # review, most confident of the open ones
        "apple": [0.97, 0.02, 0.01],    # accepted, not in the queue
    })
    app = create_app(load_task(REPO / "examples" / "fruit_veg_herb.yaml"), fake, store,
                     settings=Settings())
    with LiveServer(app) as server:
        yield server, store
    store.close()


def test_reviewer_works_through_the_queue(
    live: tuple[LiveServer, Store], tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    exe = chromium()
    server, store = live
    token = store.create_token("ingest", ["classify"])
    items = [{"text": t} for t in ("apple", "rhubarb", "tomato", "mystery", EVIL)]
    r = httpx.post(f"{server.url}/v1/tasks/fruit_veg_herb/classify", json={"items": items},
                   headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200, r.text
    password = store.add_user("alice", "reviewer")
    shots = tmp_path / "screenshots"
    shots.mkdir()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

            page.goto(f"{server.url}/review/fruit_veg_herb")
            assert "/login" in page.url
            page.fill("input[name=username]", "alice")
            page.fill("input[name=password]", password)
            page.click("button[type=submit]")
            page.wait_for_url("**/review/fruit_veg_herb")
            assert "open 4" in page.inner_text("ul.counts")
            page.screenshot(path=str(shots / "queue.png"), full_page=True)

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
            page.screenshot(path=str(shots / "item.png"), full_page=True)
            with page.expect_navigation():
                page.keyboard.press("2")  # second label: vegetable

            assert page.inner_text("#item-text") == "rhubarb"
            with page.expect_navigation():
                page.keyboard.press("a")  # accept the model's label

            # The hostile text is shown as text, and nothing in it ran.
            assert page.inner_text("#item-text") == EVIL
            assert page.evaluate("window.__pwned") is None
            assert dialogs == []
            page.screenshot(path=str(shots / "hostile.png"), full_page=True)

            page.goto(f"{server.url}/stats")
            assert page.locator("#agreement-chart rect").count() >= 6
            page.screenshot(path=str(shots / "stats.png"), full_page=True)
        finally:
            browser.close()

    answers = {i.text: (i.review_action, i.review_label, i.review_note, i.reviewer)
               for i in store.reviewed("fruit_veg_herb")}
    assert answers == {
        "mystery": ("clarify", None, "Is this a fruit at all?", "alice"),
        "tomato": ("correct", "vegetable", None, "alice"),
        "rhubarb": ("accept", "fruit", None, "alice"),
    }
    for name in ("queue", "item", "hostile", "stats"):
        assert (shots / f"{name}.png").stat().st_size > 1000
