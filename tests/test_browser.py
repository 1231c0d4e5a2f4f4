"""The web chat in headless Chromium: upload a clip, ask, watch the answer stream into the page.

Started through `vqa serve` (the installed entry point). Keeps a screenshot in
test-artifacts/app.png. Skips where Chromium or Playwright is missing (`python -m tests.setup_browser`).
"""
from __future__ import annotations

import os
import sys
import time

import pytest

from tests.conftest import ROOT, shared_media
from tests.test_app import start_server, stop_server

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACT = ROOT / "test-artifacts" / "app.png"
TIMEOUT_MS = 180_000

pytestmark = [pytest.mark.slow, pytest.mark.browser]


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: run `python -m tests.setup_browser` as root (it installs chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    proc, url = start_server(log_path, [sys.executable, "-m", "vqa.cli", "serve", "--host", "127.0.0.1"])
    yield url
    stop_server(proc)


def _wait_for_answer(page, count: int) -> str:
    """Wait until the chat holds `count` answers and streaming has stopped; return the last answer."""
    page.wait_for_function(
        "n => { const m = document.querySelectorAll('[data-testid=bot]'); "
        "return m.length >= n && m[m.length - 1].innerText.trim().length > 0 "
        "&& !document.querySelector('.generating'); }",
        arg=count)
    return page.locator("[data-testid=bot]").last.inner_text().strip()


def test_example_then_upload_ask_and_see_the_streamed_answer(browser, server):
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    problems = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server)
    page.get_by_text("Untrained model.").wait_for()
    info = page.locator("#clip-info")

    # an example clip: one click loads it and fills in its question; Enter asks
    page.locator("tr.tr-body").first.click()
    info.get_by_text("museum.mp4").wait_for()  # the first spoken example: English speech over a drawing
    assert "6.2 s" in info.inner_text() and "sound: yes" in info.inner_text()
    question = page.locator("#question textarea")
    assert question.input_value().strip()
    question.press("Enter")
    assert _wait_for_answer(page, 1)
    assert question.input_value() == ""

    # start over with an uploaded clip: the chat is emptied, the new clip's frames and sound are shown
    page.get_by_role("button", name="New clip").click()
    page.wait_for_function("() => !document.querySelector('[data-testid=bot]')")
    page.locator("input[type=file]").first.set_input_files(str(shared_media("chaplin.mp4")))
    info.get_by_text("chaplin.mp4").wait_for()
    assert "9.6 s" in info.inner_text() and "sound: yes" in info.inner_text()
    page.locator("#frames img").wait_for()
    page.locator("#mel img").wait_for()

    question.fill("What is happening in this clip?")
    page.locator("#send").click()
    page.locator("[data-testid=user]").get_by_text("What is happening in this clip?").wait_for()
    assert _wait_for_answer(page, 1)
    question.fill("And what do you hear?")
    question.press("Enter")
    assert _wait_for_answer(page, 2)
    assert page.locator("[data-testid=user]").count() == 2

    ARTIFACT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACT), full_page=True)
    assert not problems, "\n".join(problems)


def test_an_example_still_loads_after_another_visitor_closed_the_page(browser, server):
    # every visitor's click on an example gets the same copy in the upload folder: closing one page
    # must not delete it under the next visitor
    for visitor in range(2):
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(server)
        page.get_by_text("Untrained model.").wait_for()
        page.locator("tr.tr-body").first.click()
        info = page.locator("#clip-info")
        info.get_by_text("museum.mp4").wait_for()
        assert "sound: yes" in info.inner_text() and "gone" not in info.inner_text(), (visitor, info.inner_text())
        page.close(run_before_unload=True)
        time.sleep(1.5)  # the server ends the session
