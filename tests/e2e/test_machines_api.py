"""The machines API through real hubs, a real agent and real session processes (fake CLIs)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx2
import pytest

from tests.e2e.harness import Stack, wait_until


def test_list_shows_the_agent_with_metadata_on_every_hub(stack: Stack, machine_id: str) -> None:
    stack.start_agent(machine_id)
    for hub in stack.hubs:
        machines = httpx2.get(f"{hub.url}/api/machines", headers=stack.auth()).json()["machines"]
        mine = [m for m in machines if m["id"] == machine_id]
        assert len(mine) == 1
        assert mine[0]["namespace"] == "default"
        assert mine[0]["metadata"]["platform"] == "linux"
        assert mine[0]["metadata"]["hostname"] == os.uname().nodename
        assert isinstance(mine[0]["lastSeen"], int) and mine[0]["lastSeen"] > 1_600_000_000_000


def test_two_hubs_answer_the_same_requests_identically(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    stack.start_agent(machine_id)
    lists = [httpx2.get(f"{hub.url}/api/machines", headers=stack.auth()).json() for hub in stack.hubs]
    assert lists[0] == lists[1] or [m["id"] for m in lists[0]["machines"]] == [m["id"] for m in lists[1]["machines"]]
    body = {"paths": [str(tmp_path), f"{tmp_path}/nope"]}
    answers = [
        httpx2.post(f"{hub.url}/api/machines/{machine_id}/paths/exists", headers=stack.auth(), json=body).json()
        for hub in stack.hubs
    ]
    assert answers[0] == answers[1] == {"exists": {str(tmp_path): True, f"{tmp_path}/nope": False}}


def test_paths_exists_checks_on_the_machine(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    stack.start_agent(machine_id)
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "dir")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    home = stack.tmp / "home"
    (home / "proj").mkdir(parents=True, exist_ok=True)
    paths = [
        f" {tmp_path}/file ",
        f"{tmp_path}/file",
        f"{tmp_path}/dir",
        f"{tmp_path}/link",
        f"{tmp_path}/dangling",
        f"{tmp_path}/missing",
        "~",
        "~/proj",
        "proj",
        "nope",
    ]
    r = httpx2.post(
        f"{stack.hubs[0].url}/api/machines/{machine_id}/paths/exists", headers=stack.auth(), json={"paths": paths}
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "exists": {
            f"{tmp_path}/file": True,
            f"{tmp_path}/dir": True,
            f"{tmp_path}/link": True,
            f"{tmp_path}/dangling": False,
            f"{tmp_path}/missing": False,
            "~": True,
            "~/proj": True,
            "proj": True,
            "nope": False,
        }
    }


def test_paths_exists_with_a_thousand_paths(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    stack.start_agent(machine_id)
    paths = [f"{tmp_path}/p{i}" for i in range(1000)]
    for p in paths[::2]:
        Path(p).mkdir()
    r = httpx2.post(
        f"{stack.hubs[1].url}/api/machines/{machine_id}/paths/exists", headers=stack.auth(), json={"paths": paths}
    )
    assert r.status_code == 200
    exists = r.json()["exists"]
    assert len(exists) == 1000
    assert sum(exists.values()) == 500 and exists[paths[0]] is True and exists[paths[1]] is False


@pytest.mark.parametrize(
    ("agent", "yolo", "model", "argv"),
    [
        ("claude", False, None, ["--session-id", "<sid>"]),
        ("claude", True, "opus", ["--dangerously-skip-permissions", "--session-id", "<sid>", "--model", "opus"]),
        ("codex", True, "gpt-5", ["--dangerously-bypass-approvals-and-sandbox", "--model", "gpt-5"]),
        ("codex", False, None, []),
        ("cursor", True, None, ["--force"]),
        ("gemini", True, "flash", ["--yolo", "--model", "flash"]),
        ("opencode", True, "m", ["--model", "m"]),
    ],
)
def test_spawn_launches_the_cli_with_its_flags_on_a_terminal(
    stack: Stack, tmp_path: Path, agent: str, yolo: bool, model: str | None, argv: list[str]
) -> None:
    machine_id = "spawner"
    if not stack.redis.exists(stack.keys.heartbeat("default", machine_id)):
        stack.start_agent(machine_id)
    body: dict[str, object] = {"directory": str(tmp_path), "agent": agent, "yolo": yolo}
    if model:
        body["model"] = model
    r = httpx2.post(f"{stack.hubs[0].url}/api/machines/{machine_id}/spawn", headers=stack.auth(), json=body, timeout=10)
    assert r.status_code == 200
    answer = r.json()
    assert answer["success"] is True, answer
    assert answer["jobId"] and "directoryCreated" not in answer
    sid = answer["sessionId"]
    launch = stack.launched(sid)
    expected = [sid if a == "<sid>" else a for a in argv]
    assert launch["name"] == {"cursor": "cursor-agent"}.get(agent, agent)
    assert launch["argv"] == expected
    assert launch["cwd"] == str(tmp_path)
    assert launch["stdin_tty"] and launch["stdout_tty"]
    assert launch["env"]["MACHINE_HUB_SESSION_ID"] == sid
    assert launch["env"]["MACHINE_HUB_JOB_ID"] == answer["jobId"]
    assert launch["pgid"] == launch["pid"], "the session runs in its own process session"


def test_spawn_creates_a_missing_directory(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    stack.start_agent(machine_id)
    target = tmp_path / "new" / "deep"
    r = httpx2.post(
        f"{stack.hubs[1].url}/api/machines/{machine_id}/spawn",
        headers=stack.auth(),
        json={"directory": f"  {target}  "},
        timeout=10,
    )
    answer = r.json()
    assert answer["success"] is True and answer["directoryCreated"] is True
    assert target.is_dir()
    assert stack.launched(answer["sessionId"])["cwd"] == str(target)


def test_a_jobs_view_shows_its_arguments_but_never_the_prompt(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    stack.start_agent(machine_id)
    hub, prompt = stack.hubs[0].url, "Fix the login test, and keep it short."
    body = {"directory": str(tmp_path), "agent": "codex", "model": "o3", "prompt": prompt}
    spawned = httpx2.post(f"{hub}/api/machines/{machine_id}/spawn", headers=stack.auth(), json=body, timeout=10).json()
    assert spawned["success"] is True, spawned
    args = httpx2.get(f"{hub}/api/jobs/{spawned['jobId']}", headers=stack.auth()).json()["args"]
    assert (args["directory"], args["agent"], args["model"], args.get("prompt")) == (str(tmp_path), "codex", "o3", None)
    assert args["promptBytes"] == len(prompt.encode())
    assert args["promptSha256"] == hashlib.sha256(prompt.encode()).hexdigest()
    session = spawned["sessionId"]
    stopped = httpx2.post(f"{hub}/api/machines/{machine_id}/sessions/{session}/stop", headers=stack.auth(), timeout=30)
    stop_job = httpx2.get(f"{hub}/api/jobs/{stopped.json()['jobId']}", headers=stack.auth()).json()
    assert (stop_job["kind"], stop_job["args"]) == ("stop", {"sessionId": session})


def test_spawn_reports_a_cli_that_exits_at_once(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    stack.start_agent(machine_id, FAKE_CLI_EXIT="3", FAKE_CLI_STDERR="boom: no credentials")
    r = httpx2.post(
        f"{stack.hubs[0].url}/api/machines/{machine_id}/spawn",
        headers=stack.auth(),
        json={"directory": str(tmp_path)},
        timeout=10,
    )
    answer = r.json()
    assert answer["success"] is False and answer["code"] == "spawn_failed"
    assert "3" in answer["error"] and "boom: no credentials" in answer["error"]


def test_spawn_reports_a_cli_that_is_not_installed(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    stack.start_agent(machine_id, PATH="/usr/bin:/bin")
    r = httpx2.post(
        f"{stack.hubs[0].url}/api/machines/{machine_id}/spawn",
        headers=stack.auth(),
        json={"directory": str(tmp_path), "agent": "gemini"},
        timeout=10,
    )
    answer = r.json()
    assert answer["success"] is False and answer["code"] == "agent_not_installed"
    assert "gemini" in answer["error"]


def test_offline_machine_fails_fast(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    agent = stack.start_agent(machine_id)
    assert agent.stop() == 0
    for hub in stack.hubs:
        machines = httpx2.get(f"{hub.url}/api/machines", headers=stack.auth()).json()["machines"]
        assert machine_id not in [m["id"] for m in machines], "a clean stop leaves the list at once"
    r = httpx2.post(
        f"{stack.hubs[0].url}/api/machines/{machine_id}/spawn",
        headers=stack.auth(),
        json={"directory": str(tmp_path)},
        timeout=10,
    )
    assert r.status_code == 200
    assert r.json()["code"] == "machine_offline"
    assert r.elapsed.total_seconds() < stack.settings.spawn_claim_timeout_s, "answered without waiting for a claim"
    r = httpx2.post(
        f"{stack.hubs[1].url}/api/machines/{machine_id}/paths/exists",
        headers=stack.auth(),
        json={"paths": ["/"]},
        timeout=10,
    )
    assert r.status_code == 500
    assert r.json() == {"error": f"Failed to check paths: machine {machine_id} is offline", "code": "machine_offline"}


def test_killed_agent_leaves_the_list_within_the_ttl(stack: Stack, machine_id: str) -> None:
    agent = stack.start_agent(machine_id)
    agent.kill()

    def gone() -> bool:
        machines = httpx2.get(f"{stack.hubs[0].url}/api/machines", headers=stack.auth()).json()["machines"]
        return machine_id not in [m["id"] for m in machines]

    wait_until(gone, stack.settings.heartbeat_ttl_s + 2, "the killed machine to leave the list")
