"""Fleet control through real hubs, a worker and several agents: what each machine is (CLIs found,
labels, health, sessions), session limits, drain, display names and the directory routes."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.e2e.harness import SECRET, Stack, load_fake_cli, wait_until


def listing(stack: Stack, hub: int = 0, *, offline: bool = False) -> dict[str, dict[str, Any]]:
    query = "?include=offline" if offline else ""
    r = httpx2.get(f"{stack.hubs[hub].url}/api/machines{query}", headers=stack.auth())
    assert r.status_code == 200, r.text
    return {m["id"]: m for m in r.json()["machines"]}


def spawn(stack: Stack, machine_id: str, directory: Path | str, hub: int = 0, **body: Any) -> dict[str, Any]:
    r = httpx2.post(
        f"{stack.hubs[hub].url}/api/machines/{machine_id}/spawn",
        headers=stack.auth(),
        json={"directory": str(directory), **body},
        timeout=20,
    )
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def post(stack: Stack, path: str, body: object = None, hub: int = 0) -> httpx2.Response:
    return httpx2.post(f"{stack.hubs[hub].url}{path}", headers=stack.auth(), json=body, timeout=20)


def updated_events(stack: Stack, machine_id: str, after: str) -> int:
    entries = stack.redis.xrange(stack.keys.events("default"), min=f"({after}")
    return sum(1 for _, fields in entries if b'"updated"' in fields[b"e"] and machine_id.encode() in fields[b"e"])


def last_event(stack: Stack) -> str:
    newest = stack.redis.xrevrange(stack.keys.events("default"), count=1)
    return newest[0][0].decode() if newest else "0-0"


def drained_gauge(stack: Stack, hub: int = 0) -> float:
    text = httpx2.get(f"{stack.hubs[hub].url}/metrics").text
    match = re.search(r"^machine_hub_machines_drained (\S+)$", text, re.M)
    assert match, text
    return float(match.group(1))


def test_each_machine_says_which_clis_it_has_its_labels_limit_and_health(stack: Stack) -> None:
    tag = uuid.uuid4().hex[:6]
    gpu, plain = f"m-gpu-{tag}", f"m-plain-{tag}"
    stack.start_agent(
        gpu,
        args=("--label", "gpu=a100", "--label", "zone=eu"),
        PATH=stack.cli_path("claude", "codex"),
        FAKE_CLI_VERSION="1.0.3 (Claude Code)",
        MACHINE_HUB_MAX_SESSIONS="2",
    )
    stack.start_agent(plain, PATH=stack.cli_path(), MACHINE_HUB_LABELS="zone=us")
    # The CLIs are asked while the agent comes online, and announced once they answered.
    wait_until(lambda: None not in (listing(stack)[gpu]["agents"], listing(stack)[plain]["agents"]), 10, "the CLIs")
    for hub in (0, 1):
        for offline in (False, True):
            machines = listing(stack, hub, offline=offline)
            g, p = machines[gpu], machines[plain]
            assert g["agents"] == {"claude": "1.0.3", "codex": "1.0.3"}
            assert g["labels"] == {"gpu": "a100", "zone": "eu"}
            assert (g["maxSessions"], g["sessions"], g["drained"], g["displayName"]) == (2, 0, False, None)
            assert (p["agents"], p["labels"], p["maxSessions"]) == ({}, {"zone": "us"}, None)
            health = g["health"]
            assert health["cores"] == os.cpu_count()
            assert 0 < health["memoryUsedBytes"] < health["memoryTotalBytes"]
            assert health["uptimeSeconds"] > 0 and health["load1"] >= 0
            assert g["metadata"] == {k: g["metadata"][k] for k in ("hostname", "platform", "version", "launcher")}


def test_a_cli_installed_later_is_found_at_the_next_probe(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    load_fake_cli().install(bin_dir, names=("gemini",))
    path = os.pathsep.join([str(bin_dir), "/usr/bin", "/bin"])
    stack.start_agent(machine_id, PATH=path, FAKE_CLI_VERSION="gemini v0.9.1", MACHINE_HUB_CLI_PROBE_INTERVAL_S="0.3")
    wait_until(lambda: listing(stack)[machine_id]["agents"] == {"gemini": "0.9.1"}, 10, "the CLI found at start")
    load_fake_cli().install(bin_dir, names=("opencode",))
    wait_until(
        lambda: listing(stack, 1)[machine_id]["agents"] == {"gemini": "0.9.1", "opencode": "0.9.1"},
        10,
        "the new CLI in the listing",
    )


def test_a_full_machine_refuses_a_spawn_and_starts_nothing(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    stack.start_agent(machine_id, args=("--max-sessions", "1"))
    first = spawn(stack, machine_id, tmp_path / "one")
    assert first["success"] is True, first
    stack.launched(first["sessionId"])
    wait_until(lambda: listing(stack)[machine_id]["sessions"] == 1, 10, "the session in the heartbeat")
    launches = len(stack.launches())
    refused = spawn(stack, machine_id, tmp_path / "two", hub=1)
    assert refused["success"] is False and refused["code"] == "machine_full", refused
    assert "--max-sessions 1" in refused["error"]
    assert not (tmp_path / "two").exists() and len(stack.launches()) == launches, "nothing was started"
    job = httpx2.get(f"{stack.hubs[0].url}/api/jobs/{refused['jobId']}", headers=stack.auth()).json()
    assert job["state"] == "failed" and job["claimedAt"] is not None and job["result"]["code"] == "machine_full"

    stopped = post(stack, f"/api/machines/{machine_id}/sessions/{first['sessionId']}/stop")
    assert stopped.status_code == 200, stopped.text
    assert spawn(stack, machine_id, tmp_path / "three")["success"] is True


def test_a_drained_machine_takes_no_spawn_and_keeps_the_rest(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    stack.start_agent(machine_id)
    running = spawn(stack, machine_id, tmp_path / "before")
    assert running["success"] is True
    gauge = drained_gauge(stack)
    since = last_event(stack)

    for hub in (0, 1):  # twice: the second changes nothing
        r = post(stack, f"/api/machines/{machine_id}/drain", hub=hub)
        assert r.status_code == 200, r.text
        assert (r.json()["id"], r.json()["drained"], r.json()["online"]) == (machine_id, True, True)
    assert updated_events(stack, machine_id, since) == 1
    assert listing(stack, 1)[machine_id]["drained"] is True
    wait_until(lambda: drained_gauge(stack, 1) == gauge + 1, 10, "machines_drained to count it once")

    jobs_before = httpx2.get(
        f"{stack.hubs[0].url}/api/jobs", params={"machineId": machine_id}, headers=stack.auth()
    ).json()["jobs"]
    refused = spawn(stack, machine_id, tmp_path / "after")
    assert refused == {
        "success": False,
        "error": "The machine is drained: it takes no new spawns",
        "code": "machine_draining",
    }
    assert not (tmp_path / "after").exists()
    assert stack.redis.llen(stack.keys.mailbox("default", machine_id)) == 0
    jobs_after = httpx2.get(
        f"{stack.hubs[0].url}/api/jobs", params={"machineId": machine_id}, headers=stack.auth()
    ).json()["jobs"]
    assert jobs_after == jobs_before, "nothing was queued or recorded"

    checked = post(stack, f"/api/machines/{machine_id}/paths/exists", {"paths": [str(tmp_path)]})
    assert checked.json() == {"exists": {str(tmp_path): True}}
    sessions = httpx2.get(f"{stack.hubs[1].url}/api/machines/{machine_id}/sessions", headers=stack.auth()).json()
    assert running["sessionId"] in [s["sessionId"] for s in sessions["sessions"]]
    assert post(stack, f"/api/machines/{machine_id}/sessions/{running['sessionId']}/stop").status_code == 200

    since = last_event(stack)
    for hub in (1, 0):
        r = post(stack, f"/api/machines/{machine_id}/undrain", hub=hub)
        assert r.status_code == 200 and r.json()["drained"] is False, r.text
    assert updated_events(stack, machine_id, since) == 1
    wait_until(lambda: drained_gauge(stack) == gauge, 10, "machines_drained to go back")
    assert spawn(stack, machine_id, tmp_path / "again")["success"] is True


def test_machine_drain_and_undrain_commands(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    cli = stack.run_cli
    stack.start_agent(machine_id)
    drained = cli("machine", "drain", machine_id, "--namespace", "default")
    assert drained.returncode == 0, drained.stderr
    assert f"machine {machine_id} drained" in drained.stdout
    again = cli("machine", "drain", machine_id, "--namespace", "default")
    assert "was drained already" in again.stdout
    assert listing(stack)[machine_id]["drained"] is True
    assert spawn(stack, machine_id, tmp_path)["code"] == "machine_draining"
    listed = cli("machine", "list", "--namespace", "default")
    assert any(line.startswith(f"{machine_id}  online, drained") for line in listed.stdout.splitlines()), listed.stdout

    undrained = cli("machine", "undrain", machine_id, "--namespace", "default")
    assert undrained.returncode == 0 and f"machine {machine_id} undrained" in undrained.stdout
    assert spawn(stack, machine_id, tmp_path)["success"] is True

    unknown = cli("machine", "drain", "no-such-machine", "--namespace", "default")
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
    assert "no machine 'no-such-machine' in namespace default" in unknown.stderr
    foreign = cli("machine", "drain", machine_id, "--namespace", "team")
    assert foreign.returncode == 1 and "no machine" in foreign.stderr
    assert listing(stack)[machine_id]["drained"] is False, "another namespace's drain touched nothing"


def test_a_display_name_is_set_shown_and_cleared(stack: Stack, machine_id: str) -> None:
    stack.start_agent(machine_id)
    url = f"{stack.hubs[0].url}/api/machines/{machine_id}"
    since = last_event(stack)
    for _ in range(2):  # the same name twice: one change
        r = httpx2.patch(url, headers=stack.auth(), json={"displayName": "  Build box 1  "})
        assert r.status_code == 200 and r.json()["displayName"] == "Build box 1", r.text
    assert updated_events(stack, machine_id, since) == 1
    assert listing(stack, 1)[machine_id]["displayName"] == "Build box 1"
    assert httpx2.patch(url, headers=stack.auth(), json={"displayName": "x" * 65}).status_code == 400
    r = httpx2.patch(url, headers=stack.auth(), json={"displayName": None})
    assert r.status_code == 200 and r.json()["displayName"] is None
    assert listing(stack)[machine_id]["displayName"] is None
    assert updated_events(stack, machine_id, since) == 2


def test_recent_directories_come_from_the_machines_spawns(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    other = f"{machine_id}-other"
    stack.start_agent(machine_id)
    stack.start_agent(other)
    a, b = tmp_path / "a", tmp_path / "b"
    for directory in (a, b, a):
        assert spawn(stack, machine_id, directory)["success"] is True
    failed = spawn(stack, machine_id, tmp_path / "c", sessionType="worktree", worktreeName="x")
    assert failed["code"] == "directory_not_found"
    assert spawn(stack, other, tmp_path / "elsewhere")["success"] is True
    r = httpx2.get(f"{stack.hubs[1].url}/api/machines/{machine_id}/recent-directories", headers=stack.auth())
    assert r.status_code == 200, r.text
    directories = r.json()["directories"]
    assert [d["path"] for d in directories] == [str(a), str(b)]
    assert directories[0]["lastSpawnedAt"] > directories[1]["lastSpawnedAt"] > 1_600_000_000_000


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for name in ("alpha", "Beta", ".hidden", "alpha/inner"):
        (root / name).mkdir(parents=True)
    (root / "file.txt").write_text("x")
    (tmp_path / "outside").mkdir()
    (root / "link-in").symlink_to(root / "alpha")
    (root / "link-out").symlink_to(tmp_path / "outside")
    (root / "dangling").symlink_to(root / "nowhere")
    return root


def test_directory_lists_sub_folders_within_the_roots(stack: Stack, machine_id: str, tree: Path) -> None:
    stack.start_agent(machine_id, args=("--root", str(tree)))
    route = f"/api/machines/{machine_id}/directory"
    r = post(stack, route, {"path": f"  {tree}  "})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "path": str(tree),
        "entries": [
            {"name": "alpha", "path": str(tree / "alpha")},
            {"name": "Beta", "path": str(tree / "Beta")},
            {"name": "link-in", "path": str(tree / "link-in"), "symlink": True},
        ],
        "truncated": False,
    }
    hidden = post(stack, route, {"path": str(tree), "hidden": True}, hub=1).json()
    assert [e["name"] for e in hidden["entries"]] == [".hidden", "alpha", "Beta", "link-in"]
    inner = post(stack, route, {"path": str(tree / "link-in")}).json()
    assert inner == {
        "path": str(tree / "link-in"),
        "entries": [{"name": "inner", "path": str(tree / "link-in/inner")}],
        "truncated": False,
    }

    for path, code in [
        (tree.parent / "outside", "directory_outside_roots"),
        (tree / "link-out", "directory_outside_roots"),
        ("~", "directory_outside_roots"),
        (tree / "missing", "directory_not_found"),
        (tree / "file.txt", "not_a_directory"),
    ]:
        r = post(stack, route, {"path": str(path)})
        assert r.status_code == 500, (path, r.text)
        assert r.json()["code"] == code and r.json()["error"].startswith("Failed to list directory: "), r.text


def test_directory_takes_home_relative_paths_and_caps_its_entries(stack: Stack, machine_id: str) -> None:
    stack.start_agent(machine_id)  # no roots: the whole machine
    home = stack.tmp / "home"
    many = home / f"many-{machine_id}"
    for i in range(1005):
        (many / f"d{i:04}").mkdir(parents=True)
    route = f"/api/machines/{machine_id}/directory"
    assert post(stack, route, {"path": "~"}).json()["path"] == str(home)
    for path in (f"~/many-{machine_id}", f"many-{machine_id}"):
        listed = post(stack, route, {"path": path}).json()
        assert listed["path"] == str(many) and listed["truncated"] is True
        assert [e["name"] for e in listed["entries"]] == [f"d{i:04}" for i in range(1000)]


def test_directory_routes_on_an_offline_machine(stack: Stack, machine_id: str) -> None:
    stack.start_agent(machine_id).stop()
    r = post(stack, f"/api/machines/{machine_id}/directory", {"path": "/"})
    assert r.status_code == 500
    assert r.json() == {
        "error": f"Failed to list directory: machine {machine_id} is offline",
        "code": "machine_offline",
    }
    recent = httpx2.get(f"{stack.hubs[0].url}/api/machines/{machine_id}/recent-directories", headers=stack.auth())
    assert recent.json() == {"directories": []}


def test_spawn_and_paths_from_a_terminal(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    stack.start_agent(machine_id, PATH=stack.cli_path("claude"))
    env = {"MACHINE_HUB_URL": stack.hubs[1].url, "MACHINE_HUB_TOKEN": SECRET}
    started = stack.run_cli("spawn", "--machine", machine_id, "--dir", str(tmp_path / "w"), "--prompt", "hello", **env)
    assert started.returncode == 0, started.stderr
    first = re.fullmatch(rf"session (\S+) started on {machine_id}", started.stdout.splitlines()[0])
    assert first, started.stdout
    assert f"  directory  {tmp_path / 'w'} (created)" in started.stdout
    assert stack.launched(first.group(1))["argv"][-2:] == ["--", "hello"]

    missing = stack.run_cli("spawn", "--machine", machine_id, "--dir", str(tmp_path), "--agent", "gemini", **env)
    assert missing.returncode == 1 and missing.stdout == ""
    (line,) = missing.stderr.splitlines()
    assert line.startswith("Error: spawn failed (agent_not_installed): gemini") and "(job " in line

    # Placement (tests/e2e/test_placement.py has the rest, waiting included): no machine has the label.
    placed = stack.run_cli("spawn", "--any", "--label", f"run={machine_id}", "--dir", str(tmp_path), **env)
    assert placed.returncode == 1
    assert placed.stderr.strip().startswith("Error: spawn failed (no_machine): No machine fits this spawn")
    assert f"{machine_id}: labels_mismatch" in placed.stderr
    asleep = f"{machine_id}-asleep"
    stack.machine_url("default", asleep)  # registered, never online

    checked = stack.run_cli("paths", "--machine", machine_id, str(tmp_path), "/nope", **env)
    assert checked.returncode == 0, checked.stderr
    assert [line.split() for line in checked.stdout.splitlines()] == [
        ["MACHINE", "PATH", "EXISTS"],
        [machine_id, str(tmp_path), "yes"],
        [machine_id, "/nope", "no"],
    ]
    offline = stack.run_cli("paths", "--machine", asleep, "/", **env)
    assert offline.returncode == 1
    assert offline.stderr.strip() == f"Error: Failed to check paths: machine {asleep} is offline (machine_offline)"
    everywhere = stack.run_cli("paths", str(tmp_path), **env)
    assert everywhere.returncode == 0, everywhere.stderr
    assert [machine_id, str(tmp_path), "yes"] in [line.split() for line in everywhere.stdout.splitlines()]
