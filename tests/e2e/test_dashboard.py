"""The /dashboard page in a real headless browser (Debian's chromium, driven by playwright)
against real redis-server, hub and agent processes: it signs in with a pasted token and then
follows machines and jobs live from /api/events, without reloading.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from tests.e2e.browser import DOCS, LIVE_S, MAX_SCREENSHOT_BYTES, card, job_row, launch, sign_in, watch
from tests.e2e.harness import SECRET, Stack, wait_until

SCREENSHOT = DOCS / "dashboard.png"


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = launch(playwright)
    yield browser
    browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 860}, color_scheme="light")
    errors: list[str] = []
    page = watch(context, errors)
    yield page
    context.close()
    assert not errors, f"the page threw: {errors}"


def test_the_page_and_its_assets_need_no_token(stack: Stack) -> None:
    base = stack.hubs[0].url
    expected = {
        "/dashboard": "text/html",
        "/dashboard/static/dashboard.js": "text/javascript",
        "/dashboard/static/common.js": "text/javascript",
        "/dashboard/static/machines.js": "text/javascript",
        "/dashboard/static/jobs.js": "text/javascript",
        "/dashboard/static/spawn.js": "text/javascript",
        "/dashboard/static/folders.js": "text/javascript",
        "/dashboard/static/dashboard.css": "text/css",
        "/dashboard/static/favicon.svg": "image/svg+xml",
    }
    for path, media_type in expected.items():
        r = httpx2.get(f"{base}{path}")
        assert r.status_code == 200, path
        assert r.headers["content-type"].startswith(media_type), (path, r.headers["content-type"])
        assert r.headers["x-content-type-options"] == "nosniff"
    page = httpx2.get(f"{base}/dashboard").text
    assert "https://" not in page and "http://" not in page  # no CDN, no external fonts
    for path in ("/dashboard/static/../app.py", "/dashboard/static/dashboard.html", "/dashboard/static/nope.js"):
        assert httpx2.get(f"{base}{path}").status_code == 404, path


def test_dashboard_follows_machines_and_jobs_live(stack: Stack, page: Page, machine_id: str, tmp_path: Path) -> None:
    hub, other = stack.hubs  # the page talks to one hub, the test's requests go through the other
    with httpx2.Client(base_url=other.url, headers=stack.auth(), timeout=15) as api:
        run_the_story(stack, page, api, hub.url, machine_id, tmp_path)


def run_the_story(stack: Stack, page: Page, api: httpx2.Client, url: str, machine_id: str, tmp_path: Path) -> None:

    # A wrong token: a clear message and the form again.
    requests: list[Any] = []
    page.on("request", lambda request: requests.append(request))
    sign_in(page, url, "not-a-token")
    expect(page.locator("#login-error")).to_contain_text("refused this token")
    expect(page.locator("#login")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('machine-hub.token')") is None

    # The right one: the (empty) board, with the live stream connected.
    page.fill("#token-input", SECRET)
    page.click("#token-form button[type=submit]")
    expect(page.locator("#board")).to_be_visible()
    expect(page.locator("#live")).to_have_attribute("data-state", "on")
    page.evaluate("window.__sameDocument = true")  # gone if anything reloads the page
    # The token travels in the Authorization header only, the event stream included, and is kept
    # for this tab only.
    stream = [r for r in requests if urlsplit(r.url).path == "/api/events"]
    assert stream and stream[-1].headers.get("authorization") == f"Bearer {SECRET}"
    assert page.evaluate("sessionStorage.getItem('machine-hub.token')") == SECRET
    assert page.evaluate("localStorage.getItem('machine-hub.token')") is None

    # A machine comes online: its machine event makes the page re-fetch the list.
    agent = stack.start_agent(machine_id)
    machine = card(page, machine_id)
    expect(machine.locator("[data-role=machine-state]")).to_have_text("online")
    expect(machine).to_contain_text("linux")
    expect(machine).to_contain_text(re.compile(r"\d+s ago"))
    expect(machine.locator("[data-role=sessions]")).to_have_text("0")

    # Jobs run: each appears with its state and latency, without a reload.
    for i in range(3):
        r = api.post(f"/api/machines/{machine_id}/spawn", json={"directory": str(tmp_path / f"s{i}")})
        assert r.json()["success"] is True, r.text
    spawned = api.post(f"/api/machines/{machine_id}/spawn", json={"directory": str(tmp_path), "agent": "claude"})
    assert spawned.json()["success"] is True, spawned.text
    (tmp_path / "file.txt").write_text("x")
    failed = api.post(
        f"/api/machines/{machine_id}/spawn",
        json={"directory": str(tmp_path / "file.txt" / "below-a-file"), "agent": "claude"},
    )
    assert failed.status_code == 200, failed.text

    row = job_row(page, spawned.json()["jobId"])
    expect(row).to_contain_text("spawn")
    expect(row.locator(".badge")).to_have_text("succeeded")
    expect(row).to_contain_text(re.compile(r"\d+(\.\d+)? (ms|s)"))
    expect(page.locator("#jobs tbody tr", has_text="spawn")).to_have_count(5)
    expect(machine.locator("[data-role=sessions]")).to_have_text("4")
    expect(page.locator("#chart rect")).not_to_have_count(0)

    if failed.json()["success"] is False:
        failed_row = job_row(page, failed.json()["jobId"])
        expect(failed_row.locator(".badge")).to_have_text("failed")
        expect(failed_row.locator("td.err")).not_to_be_empty()

    # Filters: by state, then back to all.
    page.select_option("#filter-kind", "stop")
    expect(page.locator("#jobs tbody tr", has_text="spawn")).to_have_count(0)
    page.select_option("#filter-kind", "")
    expect(page.locator("#jobs tbody tr", has_text="spawn")).to_have_count(5)
    expect(row).to_be_visible()
    expect(page.locator("#filter-machine option", has_text=machine_id)).to_have_count(1)

    # The README's screenshot is refreshed only when asked for, so a test run leaves the tree alone.
    shot = SCREENSHOT if os.environ.get("MACHINE_HUB_UPDATE_SCREENSHOT") else tmp_path / "dashboard.png"
    shot.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(shot), full_page=True, animations="disabled")
    assert shot.stat().st_size <= MAX_SCREENSHOT_BYTES, shot.stat().st_size

    # The agent stops: the page shows the machine offline.
    agent.stop()
    expect(machine.locator("[data-role=machine-state]")).to_have_text("offline")
    expect(machine).to_have_attribute("data-online", "false")

    assert page.evaluate("window.__sameDocument") is True
    assert not [r.url for r in requests if SECRET in r.url], "a token appeared in a URL"

    # Forget: the token is gone and the form is back.
    page.click("#forget")
    expect(page.locator("#login")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('machine-hub.token')") is None


def test_token_is_remembered_and_a_lost_hub_shows_a_banner(stack: Stack, page: Page) -> None:
    hub = stack.start_hub()
    sign_in(page, hub.url)
    expect(page.locator("#live")).to_have_attribute("data-state", "on")
    page.reload()
    expect(page.locator("#board")).to_be_visible()  # no form: the token was kept
    expect(page.locator("#live")).to_have_attribute("data-state", "on")

    hub.stop()
    expect(page.locator("#banner")).to_be_visible()
    expect(page.locator("#banner")).to_contain_text(re.compile("reconnecting|Cannot reach the hub"))
    expect(page.locator("#live")).not_to_have_attribute("data-state", "on")


def test_readable_on_a_phone(stack: Stack, browser: Browser, machine_id: str) -> None:
    stack.start_agent(machine_id)
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        page = context.new_page()
        page.set_default_timeout(LIVE_S)
        sign_in(page, stack.hubs[0].url)
        expect(card(page, machine_id)).to_be_visible()
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow}px wider than a phone screen"
        # The jobs table turns into stacked cards: its header row is hidden.
        expect(page.locator("#jobs thead")).to_be_hidden()
    finally:
        context.close()


def test_terminal_commands_against_a_real_hub(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    """`machine-hub machines` and `jobs` (machine_hub/terminal.py) read the same API as the page."""
    url = stack.hubs[0].url
    env = {"MACHINE_HUB_URL": url, "MACHINE_HUB_TOKEN": SECRET}
    agent = stack.start_agent(machine_id)

    watch = subprocess.Popen(
        [sys.executable, "-m", "machine_hub", "jobs", "--watch", "--machine", machine_id],
        env=stack.env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in watch.stdout or ()], daemon=True).start()
    seen: list[str] = []

    def row(line: str) -> bool:
        return line.split()[1:4] == ["spawn", machine_id, "succeeded"]

    def saw(text: str) -> bool:
        while not lines.empty():
            seen.append(lines.get_nowait())
        return any(text in line for line in seen)

    try:
        wait_until(lambda: saw("watching"), 20, "jobs --watch to start")
        r = httpx2.post(
            f"{url}/api/machines/{machine_id}/spawn", headers=stack.auth(), json={"directory": str(tmp_path)}
        )
        assert r.json()["success"] is True, r.text
        wait_until(lambda: saw(f"spawn on {machine_id}: succeeded"), 20, "the job event in jobs --watch")
        wait_until(lambda: saw("") and any(row(line) for line in seen), 20, "the job row in jobs --watch")
    finally:
        watch.terminate()
        watch.wait(10)
        assert watch.stdout is not None
        watch.stdout.close()

    listed = cli_run(stack, env, "machines")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:3] == ["ID", "STATE", "PLATFORM"]
    assert any(row.split()[:3] == [machine_id, "online", "linux"] for row in rows), listed.stdout

    jobs = cli_run(stack, env, "jobs", "--machine", machine_id, "--kind", "spawn")
    assert jobs.returncode == 0, jobs.stderr
    assert jobs.stdout.splitlines()[1].split()[1:4] == ["spawn", machine_id, "succeeded"], jobs.stdout

    agent.stop()
    offline = cli_run(stack, env, "machines", "--all")
    assert any(row.split()[:2] == [machine_id, "offline"] for row in offline.stdout.splitlines()), offline.stdout

    refused = cli_run(stack, {**env, "MACHINE_HUB_TOKEN": "wrong"}, "machines")
    assert refused.returncode == 1
    assert (
        refused.stderr.strip()
        == f"Error: the hub at {url} refused the token (Invalid token); pass --token or set MACHINE_HUB_TOKEN"
    )


def cli_run(stack: Stack, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "machine_hub", *args], env=stack.env(**env), capture_output=True, text=True, timeout=60
    )
