"""The dashboard as a control panel, in a real browser against real hub, worker and agent
processes with fake CLIs: start sessions through the New session dialog, stop them from a
machine's sessions panel, read a job's detail, rename, drain and undrain machines.

The tests share one browser, one stack and one signed-in page, and run in file order: later
tests use the sessions earlier ones started. Every request any page makes is recorded, to prove
that the token never appears in a URL.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, Request, Route, expect, sync_playwright

from tests.e2e.browser import DOCS, MAX_SCREENSHOT_BYTES, card, job_row, launch, overflow, sign_in, watch
from tests.e2e.harness import SECRET, Process, Stack, wait_until

LONG_PROMPT = "Fix the login test. " * 20  # 400 characters: the job detail shortens it


@dataclass
class Board:
    """The signed-in page and what the tests share."""

    page: Page
    api: httpx2.Client
    work: Path
    main: str  # the machine sessions start on
    full: str  # --max-sessions 1, running one session
    gone: str  # its agent stopped: offline
    requests: list[Request]
    errors: list[str]
    found: dict[str, Any] = field(default_factory=dict)  # what one test leaves for the next


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = launch(p)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def recorded() -> list[Request]:
    return []


def new_context(browser: Browser, recorded: list[Request], **options: Any) -> BrowserContext:
    context = browser.new_context(color_scheme="light", **options)
    context.on("request", lambda request: recorded.append(request))
    return context


@pytest.fixture(scope="module")
def board(
    stack: Stack, browser: Browser, recorded: list[Request], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Board]:
    work = tmp_path_factory.mktemp("work")
    ids = {role: f"m-{role}-{os.urandom(3).hex()}" for role in ("main", "full", "gone")}
    agents: list[Process] = [
        stack.start_agent(ids["main"], args=("--label", "zone=lab", "--label", "gpu=none")),
        stack.start_agent(ids["full"], args=("--max-sessions", "1")),
    ]
    stack.start_agent(ids["gone"]).stop()
    context = new_context(browser, recorded, viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page = watch(context, errors)
    with httpx2.Client(base_url=stack.hubs[1].url, headers=stack.auth(), timeout=15) as api:
        spawned = api.post(f"/api/machines/{ids['full']}/spawn", json={"directory": str(work / "busy")})
        assert spawned.json()["success"] is True, spawned.text

        def full() -> bool:
            listed = api.get("/api/machines").json()["machines"]
            return any(m["id"] == ids["full"] and m["sessions"] == 1 for m in listed)

        wait_until(full, 15, "the full machine's heartbeat to count its session")
        sign_in(page, stack.hubs[0].url)
        expect(page.locator("#live")).to_have_attribute("data-state", "on")
        yield Board(page, api, work, ids["main"], ids["full"], ids["gone"], recorded, errors)
    context.close()
    for agent in agents:
        agent.stop()
    assert not errors, f"the page threw: {errors}"


def spawn_with_api(board: Board, directory: Path, **body: Any) -> dict[str, Any]:
    answer: dict[str, Any] = board.api.post(
        f"/api/machines/{board.main}/spawn", json={"directory": str(directory), **body}
    ).json()
    assert answer["success"] is True, answer
    return answer


def launches_in(stack: Stack, directory: Path) -> list[dict[str, Any]]:
    return [launch for launch in stack.launches() if launch["cwd"] == str(directory)]


def make_repo(folder: Path) -> None:
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(folder)]
    subprocess.run([*git, "init", "-q"], check=True)
    (folder / "README").write_text("x\n")
    subprocess.run([*git, "add", "README"], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)


def open_dialog(page: Page) -> Any:
    page.click("#new-session")
    dialog = page.locator("#spawn-dialog")
    expect(dialog).to_be_visible()
    return dialog


def option(page: Page, machine_id: str) -> Any:
    return page.locator(f'#machine-options label[data-machine-id="{machine_id}"]')


def screenshot(page: Page, name: str, tmp: Path, part: Locator | None = None) -> None:
    """docs/<name> only when MACHINE_HUB_UPDATE_SCREENSHOT is set, so a test run leaves the tree alone."""
    shot = DOCS / name if os.environ.get("MACHINE_HUB_UPDATE_SCREENSHOT") else tmp / name
    if part is None:
        page.screenshot(path=str(shot), animations="disabled")
    else:
        # Cut from the whole page scrolled to its top, so the sticky header covers nothing.
        page.evaluate("window.scrollTo(0, 0)")
        # A live event can re-render the cards while the box is read (the node is replaced, and
        # the read finds none): read it again, as long as the part is there.
        box = None
        deadline = time.monotonic() + 10
        while box is None:
            assert time.monotonic() < deadline, "the part to photograph never had a box"
            expect(part).to_be_visible()
            box = part.bounding_box()
        page.screenshot(path=str(shot), animations="disabled", full_page=True, clip=box)
    assert shot.stat().st_size <= MAX_SCREENSHOT_BYTES, shot.stat().st_size


def test_simple_session_through_the_dialog(board: Board, stack: Stack, tmp_path: Path) -> None:
    page, work = board.page, board.work
    recent = work / "recent-app"
    spawn_with_api(board, recent)  # the hub now suggests it
    gone = work / "gone-app"
    spawn_with_api(board, gone)
    gone.rmdir()  # a recent folder that no longer exists is not suggested

    dialog = open_dialog(page)
    # The picker: the main machine is picked; the full and the offline one are shown, not selectable.
    expect(option(page, board.main).locator("input")).to_be_checked()
    expect(option(page, board.main)).to_contain_text("zone=lab")
    expect(option(page, board.main)).to_contain_text("claude")
    expect(option(page, board.full)).to_contain_text("full: 1 / 1 sessions")
    expect(option(page, board.full).locator("input")).to_be_disabled()
    expect(option(page, board.gone)).to_contain_text(re.compile(r"offline, last seen \d+[smh] ago"))
    expect(option(page, board.gone).locator("input")).to_be_disabled()
    # The hub has placement (/openapi.json lists POST /api/spawn): "any suitable machine" is offered.
    expect(option(page, "*any*")).to_have_count(1)

    # Suggestions: the recent folder that exists, not the one that is gone.
    suggestion = dialog.locator("button.suggestion", has_text=str(recent))
    expect(suggestion).to_be_visible()
    expect(dialog.locator("button.suggestion", has_text=str(gone))).to_have_count(0)
    suggestion.click()
    expect(page.locator("#spawn-directory")).to_have_value(str(recent))
    status = page.locator("#directory-status")
    expect(status).to_have_attribute("data-state", "exists")

    # The live check of a typed folder that does not exist: it will be created.
    new = work / "new-app"
    page.fill("#spawn-directory", str(new))
    expect(status).to_have_attribute("data-state", "create")
    expect(status).to_contain_text("will be created")

    # The folder browser: from the work folder into recent-app, then use it.
    page.fill("#spawn-directory", str(work))
    expect(status).to_have_attribute("data-state", "exists")
    (work / ".hidden-app").mkdir()
    page.click("#browse")
    expect(page.locator("#browser-path")).to_have_text(str(work))
    folders = page.locator("#browser-list button")
    expect(folders.filter(has_text="recent-app/")).to_be_visible()
    expect(folders.filter(has_text=".hidden-app/")).to_have_count(0)
    page.check("#browser-hidden")
    expect(folders.filter(has_text=".hidden-app/")).to_be_visible()
    page.locator("#browser-list button", has_text="recent-app/").click()
    expect(page.locator("#browser-path")).to_have_text(str(recent))
    page.click("#browser-use")
    expect(page.locator("#spawn-directory")).to_have_value(str(recent))
    expect(page.locator("#browser")).to_be_hidden()
    expect(status).to_have_attribute("data-state", "exists")

    # Start it in the folder that does not exist yet, with a long prompt.
    page.fill("#spawn-directory", str(new))
    expect(status).to_have_attribute("data-state", "create")
    page.select_option("#spawn-agent", "codex")
    page.fill("#spawn-model", "o3")
    page.fill("#spawn-prompt", LONG_PROMPT)
    screenshot(page, "dashboard-new-session.png", tmp_path)
    page.click("#spawn-submit")
    result = page.locator("#spawn-result")
    expect(result).to_contain_text("Session started")
    session_id = result.locator("[data-role=session-id]").inner_text()
    expect(result.locator("[data-role=created]")).to_have_text("created for this session")
    expect(result.locator("[data-role=attach]")).to_have_value(f"tmux -L machine-hub attach -t {session_id}")
    launched = stack.launched(session_id)
    assert launched["cwd"] == str(new)
    assert launched["name"] == "codex"
    assert "o3" in launched["argv"]
    board.found["simple"] = session_id


def test_worktree_session_through_the_dialog(board: Board, stack: Stack) -> None:
    page = board.page
    repo = board.work / "repo"
    repo.mkdir()
    make_repo(repo)

    page.click("#spawn-again")  # a new request of the same dialog
    expect(page.locator("#spawn-result")).to_be_hidden()
    page.check("#spawn-form input[name=sessionType][value=worktree]")
    expect(page.locator("#worktree-fields")).to_be_visible()
    page.fill("#spawn-directory", str(repo))
    expect(page.locator("#directory-status")).to_have_attribute("data-state", "exists")
    page.fill("#spawn-worktree-name", "Fix login")
    page.click("#spawn-submit")
    result = page.locator("#spawn-result")
    expect(result).to_contain_text("Session started")
    branch = result.locator("[data-role=worktree-branch]")
    expect(branch).to_contain_text("fix-login")
    path = result.locator("[data-role=worktree-path]").inner_text()
    assert "fix-login" in path
    session_id = result.locator("[data-role=session-id]").inner_text()
    assert stack.launched(session_id)["cwd"] == path


def test_double_click_and_retry_start_one_session(board: Board, stack: Stack) -> None:
    page = board.page
    page.click("#spawn-cancel")
    open_dialog(page)

    # A double click on Start session.
    twice = board.work / "double"
    page.fill("#spawn-directory", str(twice))
    expect(page.locator("#directory-status")).to_have_attribute("data-state", "create")
    page.dblclick("#spawn-submit")
    expect(page.locator("#spawn-result")).to_contain_text("Session started")
    session_id = page.locator("[data-role=session-id]").inner_text()
    stack.launched(session_id)
    spawns = [
        r
        for r in board.requests
        if r.method == "POST" and json.loads(r.post_data or "{}").get("directory") == str(twice)
    ]
    assert len({r.headers["idempotency-key"] for r in spawns}) == 1, "one key per request of a dialog"
    # Every spawn request the clicks made has been answered, each with that one session.
    answered = {(r.response() or pytest.fail("a spawn request got no answer")).json()["sessionId"] for r in spawns}
    assert answered == {session_id}
    assert len(launches_in(stack, twice)) == 1

    # The answer of the first attempt is lost on its way back: the retry gets the same session.
    page.click("#spawn-cancel")
    open_dialog(page)
    lost = board.work / "lost-answer"
    page.fill("#spawn-directory", str(lost))
    answers: list[dict[str, Any]] = []

    def lose_the_first_answer(route: Route) -> None:
        if answers:
            route.continue_()
            return
        answers.append(route.fetch().json())  # the hub got it and answered
        route.abort("failed")

    pattern = f"**/api/machines/{board.main}/spawn"
    page.route(pattern, lose_the_first_answer)
    try:
        page.click("#spawn-submit")
        expect(page.locator("#spawn-error")).to_contain_text("did not answer")
        page.click("#spawn-submit")
        expect(page.locator("#spawn-result")).to_contain_text("Session started")
    finally:
        page.unroute(pattern)
    assert page.locator("[data-role=session-id]").inner_text() == answers[0]["sessionId"]
    stack.launched(answers[0]["sessionId"])
    assert len(launches_in(stack, lost)) == 1
    page.click("#spawn-cancel")


def test_a_session_started_from_the_keyboard_only(board: Board, stack: Stack) -> None:
    page = board.page
    folder = board.work / "keyboard"
    page.focus("#new-session")
    page.keyboard.press("Enter")
    expect(page.locator("#spawn-dialog")).to_be_visible()
    # The picked machine has the focus; Tab leads to the folder, Enter starts the session.
    expect(option(page, board.main).locator("input")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.locator("#spawn-directory")).to_be_focused()
    page.keyboard.type(str(folder))
    expect(page.locator("#directory-status")).to_have_attribute("data-state", "create")
    page.keyboard.press("Enter")
    expect(page.locator("#spawn-result")).to_contain_text("Session started")
    expect(page.locator("#spawn-again")).to_be_focused()
    stack.launched(page.locator("[data-role=session-id]").inner_text())
    assert len(launches_in(stack, folder)) == 1
    page.keyboard.press("Escape")
    expect(page.locator("#spawn-dialog")).to_be_hidden()
    expect(page.locator("#new-session")).to_be_focused()  # the focus goes back where it was


def test_a_failed_spawn_says_why_and_what_to_do(board: Board) -> None:
    page = board.page
    plain = board.work / "not-a-repo"
    plain.mkdir()
    open_dialog(page)
    page.check("#spawn-form input[name=sessionType][value=worktree]")
    page.fill("#spawn-directory", str(plain))
    page.fill("#spawn-worktree-name", "try")
    page.click("#spawn-submit")
    error = page.locator("#spawn-error")
    expect(error).to_contain_text("not_a_git_repo")
    expect(error).to_contain_text("not inside a git repository")
    expect(error).to_contain_text("start a simple session")
    expect(page.locator("#spawn-result")).to_be_hidden()

    # Fixed on the machine, the same form started again is a new request (a failed spawn started
    # nothing), not the replay of the failure.
    make_repo(plain)
    page.click("#spawn-submit")
    expect(page.locator("#spawn-result [data-role=worktree-branch]")).to_contain_text("try")
    page.click("#spawn-again")

    # A worktree session needs an existing folder: the live check says so before submitting.
    page.check("#spawn-form input[name=sessionType][value=worktree]")
    page.fill("#spawn-directory", str(board.work / "nowhere"))
    expect(page.locator("#directory-status")).to_have_attribute("data-state", "missing")
    page.keyboard.press("Escape")  # the dialog closes from the keyboard
    expect(page.locator("#spawn-dialog")).to_be_hidden()


def test_sessions_panel_stops_a_session(board: Board, stack: Stack, tmp_path: Path) -> None:
    page = board.page
    session_id = board.found["simple"]
    machine = card(page, board.main)
    machine.locator("[data-action=sessions]").click()
    item = machine.locator(f'li.session[data-session-id="{session_id}"]')
    expect(item).to_be_visible()
    expect(item).to_contain_text("codex")
    expect(item.locator("[data-role=attach]")).to_have_value(f"tmux -L machine-hub attach -t {session_id}")
    screenshot(page, "dashboard-sessions.png", tmp_path, machine)
    # Sessions are asked of the machine the person opened, never of the whole fleet.
    asked = {urlsplit(r.url).path for r in board.requests if urlsplit(r.url).path.endswith("/sessions")}
    assert asked == {f"/api/machines/{board.main}/sessions"}, asked

    # Stop asks first; Cancel keeps the session.
    item.locator("button", has_text="Stop").click()
    expect(page.locator("#confirm-dialog")).to_be_visible()
    page.click("#confirm-cancel")
    expect(page.locator("#confirm-dialog")).to_be_hidden()
    expect(item).to_be_visible()

    item.locator("button", has_text="Stop").click()
    page.click("#confirm-ok")
    expect(machine.locator(".sessions-panel .note")).to_contain_text(f"Stopped session {session_id}")
    expect(item).to_have_count(0)
    launched = stack.launched(session_id)
    wait_until(lambda: not Path(f"/proc/{launched['pid']}").exists(), 15, "the stopped CLI to end")

    # The stop job arrives in the list through the live stream, and the kind filter finds it.
    page.select_option("#filter-kind", "stop")
    stop = page.locator("#jobs tbody tr", has_text="stop").first
    expect(stop.locator(".badge")).to_have_text("succeeded")
    expect(page.locator("#jobs tbody tr", has_text="spawn")).to_have_count(0)
    stop.locator("button").click()
    detail = page.locator("#job-dialog")
    expect(detail.locator("[data-role=kind]")).to_have_text("stop")
    expect(detail.locator("[data-role=args]")).to_contain_text(session_id)
    expect(detail.locator("[data-role=result]")).to_contain_text("stopped")
    page.click("#job-close")
    page.select_option("#filter-kind", "")


def test_job_detail_shows_arguments_timeline_and_result(board: Board) -> None:
    page = board.page
    session_id = board.found["simple"]
    jobs = board.api.get("/api/jobs", params={"machineId": board.main, "kind": "spawn"}).json()["jobs"]
    job = next(j for j in jobs if (j["result"] or {}).get("sessionId") == session_id)
    page.select_option("#filter-machine", board.main)
    page.select_option("#filter-state", "succeeded")
    row = job_row(page, job["id"])
    expect(row.locator(".badge")).to_have_text("succeeded")
    row.locator("button").click()
    detail = page.locator("#job-dialog")
    expect(detail).to_be_visible()
    expect(detail.locator("[data-role=kind]")).to_have_text("spawn")
    expect(detail.locator("[data-role=machine]")).to_have_text(board.main)
    for step in ("queued", "claimed", "finished"):
        expect(detail.locator(f'.timeline li[data-step="{step}"]')).to_have_class("done")
    args = detail.locator("[data-role=args]")
    expect(args).to_contain_text("codex")
    expect(args).to_contain_text(f"… ({len(LONG_PROMPT)} characters)")
    assert LONG_PROMPT not in args.inner_text()
    expect(detail.locator("[data-role=result]")).to_contain_text(session_id)
    page.click("#job-close")
    page.select_option("#filter-state", "")
    page.select_option("#filter-machine", "")


KINDS_SHOWN = "[...document.querySelectorAll('#jobs tbody tr td[data-label=kind]')].map((c) => c.textContent)"
# Resolves window.lateAnswerRead one task after the page has read the JSON body of `url`.
LATE_ANSWER_READ = """(url) => {
  const read = Response.prototype.json;
  window.lateAnswerRead = new Promise((done) => {
    Response.prototype.json = function () {
      const body = read.call(this);
      if (this.url === url) {
        Response.prototype.json = read;
        body.finally(() => setTimeout(done, 0));
      }
      return body;
    };
  });
}"""


def test_a_filter_is_not_undone_by_a_fetch_made_before_it(board: Board) -> None:
    """The job list's answers can arrive out of order: the list asked before the person chose a kind
    (held here until the filtered one is shown) must not bring the other kinds back."""
    page = board.page
    spawn_with_api(board, board.work)
    # A stop of a session that is not there is a stop job all the same, beside the spawns.
    stopped = board.api.post(f"/api/machines/{board.main}/sessions/{uuid.uuid4()}/stop")
    assert stopped.status_code == 404, stopped.text
    held: list[Route] = []

    def hold_unfiltered(route: Route) -> None:
        if "kind=" in route.request.url:
            route.continue_()
        else:
            held.append(route)

    page.route(re.compile(r"/api/jobs\?"), hold_unfiltered)
    released = 0  # held routes let through so far, in order
    try:
        page.select_option("#filter-machine", board.main)  # asks for every kind: held
        deadline = time.monotonic() + 15
        while not held and time.monotonic() < deadline:
            page.wait_for_timeout(20)  # lets playwright hand the request to the route handler
        assert held, "the unfiltered list request never came"
        # A live event meanwhile (the end of another stop) asks for the list again: held too.
        board.api.post(f"/api/machines/{board.main}/sessions/{uuid.uuid4()}/stop")
        deadline = time.monotonic() + 15
        while len(held) < 2 and time.monotonic() < deadline:
            page.wait_for_timeout(20)
        assert len(held) >= 2, "the live event did not ask for the list again"
        page.select_option("#filter-kind", "spawn")
        # The filtered answer is shown once no other kind is left in the list.
        page.wait_for_function(
            f"() => {{ const kinds = {KINDS_SHOWN}; return kinds.length > 0 && kinds.every((k) => k === 'spawn'); }}"
        )
        # Then the held answer comes in; the page has taken it in (or dropped it) once its JSON is
        # read and one more task has run, since the list is drawn in that JSON's continuation.
        page.evaluate(LATE_ANSWER_READ, held[0].request.url)
        held[0].continue_()
        released = 1
        page.evaluate("() => window.lateAnswerRead")
        rows = page.locator("#jobs tbody tr")
        shown = [row.split("\t")[1] for row in rows.all_inner_texts()]
        assert shown and set(shown) == {"spawn"}, shown
    finally:
        # Let through what is still held (a live event may have asked for the list again meanwhile)
        # before the route goes: removing it first hands its held requests on by itself.
        for route in held[released:]:
            route.continue_()
        page.unroute(re.compile(r"/api/jobs\?"))
        page.select_option("#filter-kind", "")
        page.select_option("#filter-machine", "")


def test_rename_drain_undrain_and_an_offline_machine(board: Board) -> None:
    page = board.page
    machine = card(page, board.main)
    machine.locator("[data-action=rename]").click()
    page.fill("#rename-input", "Build box")
    page.press("#rename-input", "Enter")
    expect(machine.locator("[data-role=machine-name]")).to_have_text("Build box")
    listed = board.api.get("/api/machines").json()["machines"]
    assert next(m for m in listed if m["id"] == board.main)["displayName"] == "Build box"

    full = card(page, board.full)
    full.locator("[data-action=drain]").click()
    page.click("#confirm-ok")
    expect(full.locator("[data-role=machine-drained]")).to_be_visible()
    open_dialog(page)
    expect(option(page, board.full)).to_contain_text("drained")
    expect(option(page, board.main)).to_contain_text("Build box")
    page.click("#spawn-cancel")
    full.locator("[data-action=drain]", has_text="Undrain").click()
    expect(full.locator("[data-role=machine-drained]")).to_have_count(0)

    offline = card(page, board.gone)
    expect(offline.locator("[data-role=machine-state]")).to_have_text("offline")
    expect(offline.locator("[data-role=last-seen]")).to_have_text(re.compile(r"\d+[smh] ago"))


def test_any_suitable_machine_lets_the_hub_place_the_session(board: Board, stack: Stack) -> None:
    """The picker's "any suitable machine" sends POST /api/spawn: the hub picks the one machine that
    fits (the other is full, the third offline), and a spawn nothing fits lists each online one's reason."""
    page = board.page
    target = board.work / "placed-app"
    target.mkdir()
    open_dialog(page)
    option(page, "*any*").click()
    expect(page.locator("#browse")).to_be_disabled()
    page.fill("#spawn-directory", str(target))
    page.click("#spawn-submit")
    expect(page.locator("[data-role=session-id]")).not_to_be_empty()
    expect(page.locator("#spawn-result")).to_contain_text("Session started")
    assert [launch["env"]["MACHINE_HUB_MACHINE_ID"] for launch in launches_in(stack, target)] == [board.main]
    page.click("#spawn-cancel")

    open_dialog(page)
    option(page, "*any*").click()
    page.fill("#spawn-directory", str(board.work / "nowhere"))
    page.click("#spawn-submit")
    error = page.locator("#spawn-error")
    expect(error).to_contain_text("no_machine")
    # Each online machine's reason (placement looks at online machines only).
    expect(error.locator(f'li[data-machine-id="{board.main}"]')).to_contain_text("directory")
    expect(error.locator(f'li[data-machine-id="{board.full}"]')).to_contain_text("full")
    page.click("#spawn-cancel")
    assert launches_in(stack, board.work / "nowhere") == []


def test_readable_and_usable_on_a_phone(board: Board, stack: Stack, browser: Browser) -> None:
    context = new_context(
        browser, board.requests, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    errors: list[str] = []
    try:
        page = watch(context, errors)
        sign_in(page, stack.hubs[0].url)
        machine = card(page, board.main)
        expect(machine).to_be_visible()
        assert overflow(page) <= 0, f"the page is {overflow(page)}px wider than a phone"
        machine.locator("[data-action=sessions]").click()
        expect(machine.locator(".sessions-panel li.session").first).to_be_visible()
        assert overflow(page) <= 0, "the sessions panel overflows a phone"
        open_dialog(page)
        expect(page.locator("#spawn-dialog button.suggestion").first).to_be_visible()
        wide = page.evaluate(
            "(() => { const d = document.getElementById('spawn-dialog'); return d.scrollWidth - d.clientWidth; })()"
        )
        assert wide <= 0, f"the dialog is {wide}px wider than its box on a phone"
        assert overflow(page) <= 0
        page.click("#spawn-cancel")
        page.locator("#jobs tbody tr button").first.click()
        expect(page.locator("#job-dialog [data-role=kind]")).to_be_visible()
        assert overflow(page) <= 0, "the job detail overflows a phone"
    finally:
        context.close()
    assert not errors, f"the page threw: {errors}"


def test_no_token_in_any_requested_url(board: Board) -> None:
    assert board.requests
    assert not [r.url for r in board.requests if SECRET in r.url], "a token appeared in a URL"
    for request in board.requests:
        path = urlsplit(request.url).path
        if path.startswith("/api/"):
            assert request.headers.get("authorization") == f"Bearer {SECRET}", path
