"""Placement through real hubs, a worker and several agents: POST /api/spawn picks a machine (or
says why none fits), POST /api/paths/exists asks every online machine at once, and a spawn with
waitForMachineS waits for a machine that is offline. Each test has a namespace of its own, so the
fleet-wide routes see only its machines."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.e2e.harness import SECRET, Process, Stack, wait_until


@pytest.fixture
def ns() -> str:
    return f"p-{uuid.uuid4().hex[:8]}"


def post(stack: Stack, ns: str, path: str, body: object, hub: int = 0, **headers: str) -> httpx2.Response:
    return httpx2.post(f"{stack.hubs[hub].url}{path}", headers={**stack.auth(ns), **headers}, json=body, timeout=30)


def listing(stack: Stack, ns: str) -> dict[str, dict[str, Any]]:
    r = httpx2.get(f"{stack.hubs[0].url}/api/machines", headers=stack.auth(ns))
    assert r.status_code == 200, r.text
    return {m["id"]: m for m in r.json()["machines"]}


def job(stack: Stack, ns: str, job_id: str, hub: int = 0) -> dict[str, Any]:
    r = httpx2.get(f"{stack.hubs[hub].url}/api/jobs/{job_id}", headers=stack.auth(ns))
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()
    return found


def job_events(stack: Stack, ns: str, job_id: str) -> list[tuple[str, str | None]]:
    """The (state, code) of each event of the job, oldest first."""
    found = []
    for _, fields in stack.redis.xrange(stack.keys.events(ns)):
        event = json.loads(fields[b"e"])
        if event.get("jobId") == job_id:
            found.append((event["state"], event.get("code")))
    return found


def agent(
    stack: Stack, ns: str, name: str, *args: str, clis: tuple[str, ...] = ("claude",), wait: bool = True, **env: str
) -> Process:
    return stack.start_agent(name, ns, args=args, PATH=stack.cli_path(*clis), wait=wait, **env)


def announced(stack: Stack, ns: str, *machine_ids: str, timeout_s: float = 20) -> None:
    """Wait until every machine is listed with the CLIs its agent found."""
    wait_until(
        lambda: all(listing(stack, ns).get(m, {}).get("agents") is not None for m in machine_ids),
        timeout_s,
        "the agents' CLIs in the listing",
    )


def gone_to_sleep(stack: Stack, ns: str, machine_id: str, *args: str) -> None:
    """A machine that was online (announced, with its CLIs) and stopped cleanly: off the list."""
    first = agent(stack, ns, machine_id, *args)
    announced(stack, ns, machine_id)
    assert first.stop() == 0
    wait_until(lambda: machine_id not in listing(stack, ns), 10, "the machine to leave the list")


@pytest.mark.timeout(150)  # seven agents start at once on a shared machine
def test_placement_picks_the_least_busy_machine_and_says_why_the_others_do_not_fit(
    stack: Stack, ns: str, tmp_path: Path
) -> None:
    project = tmp_path / "work" / "proj"
    project.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    gpu = ("--label", "gpu=a100")
    a, busy, codex, cpu, full, drained, rooted = (f"{x}-{ns}" for x in ("a", "b", "c", "d", "e", "f", "g"))
    agent(stack, ns, a, *gpu, wait=False)
    agent(stack, ns, busy, *gpu, wait=False)
    agent(stack, ns, codex, *gpu, clis=("codex",), wait=False)
    agent(stack, ns, cpu, "--label", "gpu=none", wait=False)
    agent(stack, ns, full, *gpu, "--max-sessions", "1", wait=False)
    agent(stack, ns, drained, *gpu, wait=False)
    agent(stack, ns, rooted, *gpu, MACHINE_HUB_ROOTS=str(elsewhere), wait=False)
    announced(stack, ns, a, busy, codex, cpu, full, drained, rooted, timeout_s=90)
    for machine_id in (busy, full):
        started = post(stack, ns, f"/api/machines/{machine_id}/spawn", {"directory": str(tmp_path / machine_id)})
        assert started.json()["success"] is True, started.text
    wait_until(lambda: listing(stack, ns)[busy]["sessions"] == listing(stack, ns)[full]["sessions"] == 1, 10, "beats")
    assert post(stack, ns, f"/api/machines/{drained}/drain", None).status_code == 200

    body = {"directory": str(project), "placement": {"labels": {"gpu": "a100"}}}
    placed = post(stack, ns, "/api/spawn", body, hub=1)
    assert placed.status_code == 200, placed.text
    answer = placed.json()
    assert answer["success"] is True and answer["machineId"] == a, answer
    launch = stack.launched(answer["sessionId"])
    assert launch["cwd"] == str(project) and launch["env"]["MACHINE_HUB_MACHINE_ID"] == a
    assert job(stack, ns, answer["jobId"])["machineId"] == a

    # Only these machines, all unfit: one reason each, nothing queued or started.
    stack.machine_url(ns, f"h-{ns}")  # registered, never online
    named = [codex, cpu, full, drained, rooted, f"h-{ns}", f"nowhere-{ns}"]
    launches = len(stack.launches())
    body = {"directory": str(project), "placement": {"labels": {"gpu": "a100"}, "machines": named}}
    refused = post(stack, ns, "/api/spawn", body).json()
    assert refused["success"] is False and refused["code"] == "no_machine", refused
    assert refused["error"] == "No machine fits this spawn (7 considered)"
    assert {c["machineId"]: c["reason"] for c in refused["candidates"]} == {
        codex: "agent_not_installed",
        cpu: "labels_mismatch",
        full: "full",
        drained: "draining",
        rooted: "directory_not_found",
        f"h-{ns}": "offline",
        f"nowhere-{ns}": "not_found",
    }
    assert "jobId" not in refused and len(stack.launches()) == launches


def test_a_machine_that_does_not_answer_the_path_check_is_passed_over(stack: Stack, ns: str, tmp_path: Path) -> None:
    # A long heartbeat keeps the stopped agent online: only its path check goes unanswered.
    slow, ok = f"slow-{ns}", f"zz-{ns}"
    stopped = agent(stack, ns, slow, MACHINE_HUB_HEARTBEAT_TTL_S="60", MACHINE_HUB_HEARTBEAT_INTERVAL_S="20")
    agent(stack, ns, ok)
    announced(stack, ns, slow, ok)
    stopped.signal(signal.SIGSTOP)
    try:
        answer = post(stack, ns, "/api/spawn", {"directory": str(tmp_path)}).json()
        assert answer["success"] is True and answer["machineId"] == ok, answer
        only = {"directory": str(tmp_path), "placement": {"machines": [slow]}}
        refused = post(stack, ns, "/api/spawn", only).json()
        assert refused["candidates"] == [{"machineId": slow, "reason": "no_answer"}], refused

        checked = post(stack, ns, "/api/paths/exists", {"paths": [str(tmp_path), " /nope/x ", str(tmp_path)]})
        assert checked.status_code == 200, checked.text
        assert checked.json() == {
            "machines": {ok: {str(tmp_path): True, "/nope/x": False}},
            "unanswered": {slow: "timeout"},
        }
        env = {"MACHINE_HUB_URL": stack.hubs[1].url, "MACHINE_HUB_TOKEN": f"{SECRET}:{ns}"}
        shown = stack.run_cli("paths", str(tmp_path), **env)
        assert shown.returncode == 0, shown.stderr
        rows = [line.split(maxsplit=2) for line in shown.stdout.splitlines()[1:]]
        assert rows == [[ok, str(tmp_path), "yes"], [slow, str(tmp_path), "no answer (timeout)"]]
    finally:
        stopped.signal(signal.SIGCONT)


def test_paths_everywhere_and_the_cli(stack: Stack, ns: str, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    a, rooted = f"a-{ns}", f"b-{ns}"
    agent(stack, ns, a)
    agent(stack, ns, rooted, MACHINE_HUB_ROOTS=str(mine))
    other = f"o-{ns}"
    stack.start_agent(other, f"x{ns}")  # another namespace's machine is never asked
    paths = [str(mine), str(tmp_path)]
    for hub in (0, 1):
        r = post(stack, ns, "/api/paths/exists", {"paths": paths}, hub=hub)
        assert r.status_code == 200, r.text
        assert r.json() == {
            "machines": {a: {str(mine): True, str(tmp_path): True}, rooted: {str(mine): True, str(tmp_path): False}},
            "unanswered": {},
        }
    page = post(stack, ns, "/api/paths/exists?limit=1", {"paths": paths}).json()
    assert list(page["machines"]) == [a] and page["nextCursor"]
    rest = post(stack, ns, f"/api/paths/exists?limit=1&cursor={page['nextCursor']}", {"paths": paths}).json()
    assert list(rest["machines"]) == [rooted] and "nextCursor" not in rest

    env = {"MACHINE_HUB_URL": stack.hubs[1].url, "MACHINE_HUB_TOKEN": f"{SECRET}:{ns}"}
    shown = stack.run_cli("paths", *paths, **env)
    assert shown.returncode == 0, shown.stderr
    rows = [line.split() for line in shown.stdout.splitlines()]
    assert rows[0] == ["MACHINE", "PATH", "EXISTS"]
    assert rows[1:] == [
        [a, str(mine), "yes"],
        [a, str(tmp_path), "yes"],
        [rooted, str(mine), "yes"],
        [rooted, str(tmp_path), "no"],
    ]
    bad = post(stack, ns, "/api/paths/exists", {"paths": []})
    assert bad.status_code == 400 and bad.json()["detail"] == "Expected `array` of length >= 1 - at `$.paths`"


def test_cli_spawn_any_with_labels(stack: Stack, ns: str, tmp_path: Path) -> None:
    eu, us = f"eu-{ns}", f"us-{ns}"
    agent(stack, ns, eu, "--label", "zone=eu")
    agent(stack, ns, us, "--label", "zone=us")
    announced(stack, ns, eu, us)
    env = {"MACHINE_HUB_URL": stack.hubs[0].url, "MACHINE_HUB_TOKEN": f"{SECRET}:{ns}"}
    started = stack.run_cli("spawn", "--any", "--label", "zone=us", "--dir", str(tmp_path), **env)
    assert started.returncode == 0, started.stderr
    assert f"started on {us}" in started.stdout
    none = stack.run_cli("spawn", "--any", "--label", "zone=mars", "--dir", str(tmp_path), **env)
    assert none.returncode == 1
    assert "spawn failed (no_machine)" in none.stderr
    assert f"{eu}: labels_mismatch" in none.stderr and f"{us}: labels_mismatch" in none.stderr


def test_a_spawn_waits_for_its_machine_to_come_online(stack: Stack, ns: str, tmp_path: Path) -> None:
    machine_id = f"late-{ns}"
    stack.machine_url(ns, machine_id)
    body = {"directory": str(tmp_path / "late"), "waitForMachineS": 120}
    key = {"Idempotency-Key": f"wait-{ns}"}
    r = post(stack, ns, f"/api/machines/{machine_id}/spawn", body, **key)
    assert r.status_code == 202, r.text
    job_id = r.json()["jobId"]
    assert r.json() == {"jobId": job_id, "state": "queued"}
    waiting = job(stack, ns, job_id, hub=1)
    assert waiting["state"] == "queued" and waiting["waitingUntil"] >= waiting["createdAt"] + 120_000
    assert job_events(stack, ns, job_id) == [("waiting", None)]
    again = post(stack, ns, f"/api/machines/{machine_id}/spawn", body, hub=1, **key)
    assert (again.status_code, again.json()) == (202, {"jobId": job_id, "state": "queued"})
    other = post(stack, ns, f"/api/machines/{machine_id}/spawn", {**body, "waitForMachineS": 60}, **key)
    assert other.status_code == 422, other.text
    # Without a wait, an offline machine still fails at once.
    offline = post(stack, ns, f"/api/machines/{machine_id}/spawn", {"directory": str(tmp_path)}).json()
    assert offline["code"] == "machine_offline"

    stack.start_agent(machine_id, ns)
    done = wait_until(lambda: (j := job(stack, ns, job_id))["state"] == "succeeded" and j, 20, "the waiting job to run")
    assert done["claimedAt"] >= done["createdAt"] and done["result"]["success"] is True
    stack.launched(done["result"]["sessionId"])
    # The worker announces a waiting spawn's end (and marks its record so). The agent answered the
    # hub that queued the job too: once that hub has answered a later path check (its reply reader
    # takes replies in order), it has taken that answer in, and it announces nothing.
    record_key = stack.keys.job(ns, machine_id, job_id)
    wait_until(lambda: json.loads(stack.redis.get(record_key) or b"{}").get("published"), 20, "the worker's look")
    checked = post(stack, ns, f"/api/machines/{machine_id}/paths/exists", {"paths": [str(tmp_path)]})
    assert checked.status_code == 200, checked.text
    assert job_events(stack, ns, job_id) == [("waiting", None), ("succeeded", None)]
    settled = post(stack, ns, f"/api/machines/{machine_id}/spawn", body, hub=1, **key)
    assert settled.status_code == 200 and settled.json()["sessionId"] == done["result"]["sessionId"], settled.text
    launches = [x for x in stack.launches() if x["env"].get("MACHINE_HUB_MACHINE_ID") == machine_id]
    assert len(launches) == 1


def test_a_waiting_spawn_expires_and_never_runs(stack: Stack, ns: str, tmp_path: Path) -> None:
    machine_id = f"never-{ns}"
    stack.machine_url(ns, machine_id)
    r = post(stack, ns, f"/api/machines/{machine_id}/spawn", {"directory": str(tmp_path / "x"), "waitForMachineS": 1})
    assert r.status_code == 202, r.text
    job_id = r.json()["jobId"]
    expired = wait_until(lambda: (j := job(stack, ns, job_id))["state"] == "expired" and j, 20, "the wait to end")
    assert expired["claimedAt"] is None and expired["finishedAt"] >= expired["waitingUntil"]
    wait_until(lambda: job_events(stack, ns, job_id) == [("waiting", None), ("expired", None)], 20, "its event")

    stack.start_agent(machine_id, ns)  # it finds the job in its mailbox, too late to claim
    wait_until(lambda: stack.redis.llen(stack.keys.mailbox(ns, machine_id)) == 0, 10, "the mailbox read")
    assert job(stack, ns, job_id)["state"] == "expired"
    assert not [x for x in stack.launches() if x["env"].get("MACHINE_HUB_MACHINE_ID") == machine_id]


def test_placement_waits_for_a_machine_when_none_is_online(stack: Stack, ns: str, tmp_path: Path) -> None:
    machine_id = f"sleepy-{ns}"
    gone_to_sleep(stack, ns, machine_id, "--label", "zone=eu")
    body: dict[str, Any] = {"directory": str(tmp_path), "placement": {"labels": {"zone": "eu"}}}
    refused = post(stack, ns, "/api/spawn", body).json()
    assert refused == {"success": False, "code": "no_machine", "error": "No machine to consider", "candidates": []}

    queued = post(stack, ns, "/api/spawn", {**body, "waitForMachineS": 120}, hub=1)
    assert queued.status_code == 202, queued.text
    job_id = queued.json()["jobId"]
    assert queued.json() == {"jobId": job_id, "state": "queued", "machineId": machine_id}
    agent(stack, ns, machine_id, "--label", "zone=eu")
    done = wait_until(lambda: (j := job(stack, ns, job_id))["state"] == "succeeded" and j, 20, "the job to run")
    stack.launched(done["result"]["sessionId"])


def test_cli_spawn_any_waits_for_a_machine(stack: Stack, ns: str, tmp_path: Path) -> None:
    machine_id = f"cli-{ns}"
    gone_to_sleep(stack, ns, machine_id)
    env = stack.env(MACHINE_HUB_URL=stack.hubs[0].url, MACHINE_HUB_TOKEN=f"{SECRET}:{ns}")
    args = ("spawn", "--any", "--dir", str(tmp_path), "--wait-for-machine", "120")
    with subprocess.Popen(
        [sys.executable, "-m", "machine_hub", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as cli:
        assert cli.stderr is not None
        line = cli.stderr.readline()  # printed once the hub answered 202
        assert line.startswith("queued as job ") and "waiting up to 120 s" in line, line
        agent(stack, ns, machine_id)
        out, err = cli.communicate(timeout=60)
    assert cli.returncode == 0, err
    assert f"started on {machine_id}" in out


def test_an_idempotency_key_keeps_a_placed_spawn_on_its_machine(stack: Stack, ns: str, tmp_path: Path) -> None:
    a, b = f"a-{ns}", f"b-{ns}"
    agent(stack, ns, a)
    agent(stack, ns, b)
    announced(stack, ns, a, b)
    body = {"directory": str(tmp_path)}
    key = {"Idempotency-Key": f"placed-{ns}"}
    first = post(stack, ns, "/api/spawn", body, **key).json()
    assert first["success"] is True, first
    # Now the chosen machine has a session and the other none: a new choice would differ.
    wait_until(lambda: listing(stack, ns)[first["machineId"]]["sessions"] == 1, 10, "the session in the heartbeat")
    again = post(stack, ns, "/api/spawn", body, hub=1, **key).json()
    assert again == first
    assert len([x for x in stack.launches() if x["cwd"] == str(tmp_path)]) == 1
    other = post(stack, ns, "/api/spawn", {**body, "agent": "codex"}, **key)
    assert (other.status_code, other.json()) == (
        422,
        {"error": "Idempotency-Key was already used with a different body"},
    )
    fresh = post(stack, ns, "/api/spawn", body, **{"Idempotency-Key": f"next-{ns}"}).json()
    assert fresh["success"] is True and fresh["machineId"] != first["machineId"], fresh


def test_a_placed_spawn_waiting_for_a_machine_keeps_its_idempotency_key(stack: Stack, ns: str, tmp_path: Path) -> None:
    machine_id = f"nap-{ns}"
    gone_to_sleep(stack, ns, machine_id)
    body = {"directory": str(tmp_path), "waitForMachineS": 120}
    key = {"Idempotency-Key": f"nap-{ns}"}
    queued = post(stack, ns, "/api/spawn", body, **key)
    assert queued.status_code == 202, queued.text
    again = post(stack, ns, "/api/spawn", body, hub=1, **key)
    assert (again.status_code, again.json()) == (202, queued.json())
    agent(stack, ns, machine_id)
    job_id = queued.json()["jobId"]
    done = wait_until(lambda: (j := job(stack, ns, job_id))["state"] == "succeeded" and j, 20, "the job to run")
    settled = post(stack, ns, "/api/spawn", body, **key)
    assert settled.status_code == 200 and settled.json()["machineId"] == machine_id, settled.text
    assert settled.json()["sessionId"] == done["result"]["sessionId"] and settled.json()["jobId"] == job_id
    assert len([x for x in stack.launches() if x["cwd"] == str(tmp_path)]) == 1


def test_cli_spawn_that_waits_in_vain_fails_not_started(stack: Stack, ns: str, tmp_path: Path) -> None:
    asleep = f"never-{ns}"
    stack.machine_url(ns, asleep)  # registered, never online
    env = {"MACHINE_HUB_URL": stack.hubs[0].url, "MACHINE_HUB_TOKEN": f"{SECRET}:{ns}"}
    waiting = stack.run_cli("spawn", "--machine", asleep, "--dir", str(tmp_path), "--wait-for-machine", "1", **env)
    assert waiting.returncode == 1, waiting.stderr
    queued, failed = waiting.stderr.splitlines()
    assert queued.startswith("queued as job ") and queued.endswith("waiting up to 1 s for a machine")
    assert failed.startswith("Error: spawn failed (not_started): no machine took the job in time")
