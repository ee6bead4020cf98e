"""`machine-hub spawn` and `paths` against a fake stdlib hub: the bodies they send, what they print,
exit codes, and a readable line for a hub without the placement routes."""

from __future__ import annotations

import json

import pytest

from machine_hub import actions
from tests.unit.test_terminal import TOKEN, Answer, FakeHub, assert_one_line_error, hub, run

__all__ = ["hub"]  # the fake hub fixture, used by name
JOB = "m-1.4be1c0ffee00112233445566778899aa"
STARTED = {"success": True, "sessionId": "7c0e-sid", "jobId": JOB}


def spawn(fake: FakeHub, *args: str) -> object:
    return run("spawn", "--url", fake.url, "--token", TOKEN, *args)


def test_spawn_on_a_machine_sends_the_body_and_prints_the_session(hub: FakeHub) -> None:
    hub.json("/api/machines/m%201/spawn", STARTED | {"directoryCreated": True})
    result = spawn(
        hub, "--machine", "m 1", "--dir", "~/src/app", "--agent", "codex", "--model", "gpt-5", "--prompt", "hi"
    )
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert result.output.splitlines() == [  # type: ignore[attr-defined]
        "session 7c0e-sid started on m 1",
        "  directory  ~/src/app (created)",
        f"  job        {JOB}",
    ]
    assert hub.bodies == [
        (
            "POST",
            "/api/machines/m%201/spawn",
            {"directory": "~/src/app", "agent": "codex", "yolo": False, "model": "gpt-5", "prompt": "hi"},
        )
    ]


def test_a_worktree_spawn(hub: FakeHub) -> None:
    worktree = {"path": "/src/app-worktrees/fix", "branch": "mh-fix", "basePath": "/src/app"}
    hub.json("/api/machines/m1/spawn", STARTED | {"worktree": worktree})
    result = spawn(hub, "--machine", "m1", "--dir", "/src/app", "--worktree", "Fix", "--yolo")
    assert result.exit_code == 0  # type: ignore[attr-defined]
    assert "  worktree   /src/app-worktrees/fix (branch mh-fix)" in result.output  # type: ignore[attr-defined]
    body = hub.bodies[0][2]
    assert (body["sessionType"], body["worktreeName"], body["yolo"]) == ("worktree", "Fix", True)


def test_a_failed_spawn_is_one_line_and_exit_1(hub: FakeHub) -> None:
    hub.json("/api/machines/m1/spawn", {"success": False, "code": "machine_full", "error": "too many", "jobId": JOB})
    result = spawn(hub, "--machine", "m1", "--dir", "/x")
    assert_one_line_error(result, f"spawn failed (machine_full): too many (job {JOB})")


def test_a_draining_machine(hub: FakeHub) -> None:
    hub.json("/api/machines/m1/spawn", {"success": False, "code": "machine_draining", "error": "drained"})
    assert_one_line_error(spawn(hub, "--machine", "m1", "--dir", "/x"), "spawn failed (machine_draining): drained")


def test_json_prints_the_hubs_answer(hub: FakeHub) -> None:
    hub.json("/api/machines/m1/spawn", STARTED)
    result = spawn(hub, "--machine", "m1", "--dir", "/x", "--json")
    assert result.exit_code == 0 and json.loads(result.output) == STARTED  # type: ignore[attr-defined]


def test_any_machine_with_labels_goes_to_the_placement_route(hub: FakeHub) -> None:
    hub.json("/api/spawn", STARTED | {"machineId": "m-2"})
    result = spawn(hub, "--any", "--label", "gpu=a100", "--label", "zone=eu", "--dir", "/x")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert result.output.splitlines()[0] == "session 7c0e-sid started on m-2"  # type: ignore[attr-defined]
    assert hub.bodies[0][1] == "/api/spawn"
    assert hub.bodies[0][2]["placement"] == {"labels": {"gpu": "a100", "zone": "eu"}}


def test_no_machine_fits_names_the_candidates(hub: FakeHub) -> None:
    candidates = [{"machineId": "m-1", "reason": "drained"}, {"machineId": "m-2", "reason": "no claude"}]
    hub.json("/api/spawn", {"success": False, "code": "no_machine", "error": "none fits", "candidates": candidates})
    result = spawn(hub, "--any", "--dir", "/x")
    assert_one_line_error(result, "spawn failed (no_machine): none fits [m-1: drained; m-2: no claude]")


@pytest.mark.parametrize(
    "answer", [Answer(404, b"Not Found", "text/plain"), Answer(405, b"Method Not Allowed", "text/plain")]
)
def test_a_hub_without_placement_says_so(hub: FakeHub, answer: Answer) -> None:
    hub.answer("/api/spawn", answer)
    result = spawn(hub, "--any", "--label", "gpu=a100", "--dir", "/x")
    assert_one_line_error(result, "this hub does not support --any (POST /api/spawn)", "--machine ID")


def test_a_hub_without_waiting_says_so(hub: FakeHub) -> None:
    hub.json("/api/machines/m1/spawn", {"success": False, "code": "machine_offline", "error": "offline", "jobId": JOB})
    result = spawn(hub, "--machine", "m1", "--dir", "/x", "--wait-for-machine", "30")
    assert_one_line_error(result, "this hub does not support --wait-for-machine (waitForMachineS)")
    assert hub.bodies[0][2]["waitForMachineS"] == 30


def test_a_queued_spawn_is_followed_until_it_ends(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(actions, "POLL_S", 0.01)
    hub.json("/api/spawn", {"jobId": JOB, "state": "queued"}, status=202)
    queued = {"id": JOB, "machineId": "m-1", "state": "queued", "result": None}
    done = queued | {"state": "succeeded", "result": {"success": True, "sessionId": "s-9"}}
    hub.answer(f"/api/jobs/{JOB}", *(Answer(200, json.dumps(j).encode()) for j in (queued, queued, done)))
    result = spawn(hub, "--any", "--dir", "/x", "--wait-for-machine", "60")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert f"queued as job {JOB}: waiting up to 60 s for a machine" in result.output  # type: ignore[attr-defined]
    assert "session s-9 started on m-1" in result.output  # type: ignore[attr-defined]


def test_a_queued_spawn_that_expired(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(actions, "POLL_S", 0.01)
    hub.json("/api/machines/m1/spawn", {"jobId": JOB, "state": "queued"}, status=202)
    hub.json(f"/api/jobs/{JOB}", {"id": JOB, "machineId": "m1", "state": "expired", "result": None})
    result = spawn(hub, "--machine", "m1", "--dir", "/x", "--wait-for-machine", "5")
    assert result.exit_code == 1 and "spawn failed (not_started)" in result.output  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dir", "/x"], "pass --machine ID or --any"),
        (["--machine", "m1", "--any", "--dir", "/x"], "pass --machine ID or --any"),
        (["--machine", "m1", "--label", "a=b", "--dir", "/x"], "--label goes with --any"),
        (["--any", "--label", "a b", "--dir", "/x"], "label 'a b' must be key=value"),
        (["--machine", "m1"], "Missing option '--dir'"),
        (["--machine", "m1", "--dir", "/x", "--wait-for-machine", "0"], "0 is not in the range"),
        (["--machine", "m1", "--dir", "/x", "--agent", "vim"], "'vim' is not one of"),
    ],
)
def test_bad_spawn_options_are_usage_errors(args: list[str], message: str) -> None:
    result = run("spawn", "--token", TOKEN, *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_paths_on_a_machine(hub: FakeHub) -> None:
    hub.json("/api/machines/m1/paths/exists", {"exists": {"~": True, "/nope": False}})
    result = run("paths", "--url", hub.url, "--token", TOKEN, "--machine", "m1", "~", " /nope ")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "MACHINE  PATH   EXISTS",
        "m1       ~      yes",
        "m1       /nope  no",
    ]
    assert hub.bodies[0][2] == {"paths": ["~", " /nope "]}


def test_paths_on_every_machine(hub: FakeHub) -> None:
    hub.json("/api/paths/exists", {"machines": {"m2": {"/a": False}, "m1": {"/a": True}}})
    result = run("paths", "--url", hub.url, "--token", TOKEN, "/a")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1:] == ["m1       /a    yes", "m2       /a    no"]
    hub.json("/api/paths/exists", {"machines": {}})
    assert run("paths", "--url", hub.url, "--token", TOKEN, "/a").output == "no machines online\n"


def test_paths_on_every_machine_needs_a_recent_hub(hub: FakeHub) -> None:
    result = run("paths", "--url", hub.url, "--token", TOKEN, "/a")
    assert_one_line_error(result, "this hub does not support checking paths on every machine", "--machine ID")


def test_a_failed_path_check_says_why(hub: FakeHub) -> None:
    failed = {"error": "Failed to check paths: machine m1 is offline", "code": "machine_offline"}
    hub.json("/api/machines/m1/paths/exists", failed, status=500)
    result = run("paths", "--url", hub.url, "--token", TOKEN, "--machine", "m1", "/a")
    assert_one_line_error(result, "Failed to check paths: machine m1 is offline (machine_offline)")
    hub.json("/api/machines/m2/paths/exists", {"error": "Machine not found"}, status=404)
    result = run("paths", "--url", hub.url, "--token", TOKEN, "--machine", "m2", "/a")
    assert_one_line_error(result, "HTTP 404: Machine not found")


def test_paths_needs_a_path() -> None:
    result = run("paths", "--token", TOKEN, "--machine", "m1")
    assert result.exit_code == 2 and "Missing argument 'PATHS...'" in result.output
