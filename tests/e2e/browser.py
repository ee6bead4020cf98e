"""Headless Debian chromium, driven by playwright, for the dashboard's browser tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Playwright, expect

from tests.e2e.harness import SECRET

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DOCS = Path(__file__).resolve().parents[2] / "docs"
MAX_SCREENSHOT_BYTES = 300 * 1024
LIVE_S = 15_000  # ms: how long the page may take to show what a live event announced

# expect() waits as long as the page's own actions: a shared 2-core box can be slow to show a change.
expect.set_options(timeout=LIVE_S)


def launch(playwright: Playwright) -> Browser:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium"
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def watch(context: BrowserContext, errors: list[str]) -> Page:
    """A new page of `context` whose own script errors land in `errors`."""
    page = context.new_page()
    page.set_default_timeout(LIVE_S)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: console(msg, errors))
    return page


def console(message: ConsoleMessage, errors: list[str]) -> None:
    # Failed requests (a refused token, a stopped hub) are logged by the browser itself; only our
    # own script's errors count.
    if message.type == "error" and "Failed to load resource" not in message.text and "EventSource" not in message.text:
        errors.append(message.text)


def sign_in(page: Page, url: str, token: str = SECRET) -> None:
    page.goto(f"{url}/dashboard")
    expect(page.locator("#login")).to_be_visible()
    page.fill("#token-input", token)
    page.click("#token-form button[type=submit]")


def card(page: Page, machine_id: str) -> Any:
    return page.locator(f'article.machine[data-machine-id="{machine_id}"]')


def job_row(page: Page, job_id: str) -> Any:
    return page.locator(f'#jobs tbody tr[data-job-id="{job_id}"]')


def overflow(page: Page) -> int:
    """How many pixels the page is wider than its window (0 or less: no horizontal scrolling)."""
    return int(page.evaluate("document.documentElement.scrollWidth - window.innerWidth"))
