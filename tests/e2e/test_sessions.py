"""Sessions a person can see and stop: tmux by default, a pseudo-terminal without it."""

from __future__ import annotations

import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx2

from tests.e2e.harness import Stack, wait_until


def tmux_has(stack: Stack, session_id: str) -> bool:
    found = subprocess.run(
        ["tmux", "-L", stack.settings.tmux_socket, "has-session", "-t", session_id], capture_output=True, check=False
    )
    return found.returncode == 0


def spawn(stack: Stack, machine_id: str, **body: Any) -> dict[str, Any]:
    r = httpx2.post(f"{stack.hubs[0].url}/api/machines/{machine_id}/spawn", headers=stack.auth(), json=body, timeout=15)
    answer: dict[str, Any] = r.json()
    assert answer["success"] is True, answer
    return answer


def sessions(stack: Stack, machine_id: str, hub: int = 1) -> list[dict[str, Any]]:
    r = httpx2.get(f"{stack.hubs[hub].url}/api/machines/{machine_id}/sessions", headers=stack.auth(), timeout=15)
    assert r.status_code == 200, r.text
    listed: list[dict[str, Any]] = r.json()["sessions"]
    return listed


def stop(stack: Stack, machine_id: str, session_id: str) -> httpx2.Response:
    return httpx2.post(
        f"{stack.hubs[0].url}/api/machines/{machine_id}/sessions/{session_id}/stop", headers=stack.auth(), timeout=15
    )


def test_tmux_sessions_are_attachable_listed_and_stopped(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    stack.start_agent(machine_id)
    machines = httpx2.get(f"{stack.hubs[0].url}/api/machines", headers=stack.auth()).json()["machines"]
    assert next(m for m in machines if m["id"] == machine_id)["metadata"]["launcher"] == "tmux"
    answer = spawn(stack, machine_id, directory=str(tmp_path), agent="codex")
    sid = answer["sessionId"]
    assert tmux_has(stack, sid), "a person can attach with tmux -L <socket> attach -t <sessionId>"
    launch = stack.launched(sid)
    assert launch["stdin_tty"] and launch["stdout_tty"]
    (listed,) = [s for s in sessions(stack, machine_id) if s["sessionId"] == sid]
    assert listed == {
        "sessionId": sid,
        "jobId": answer["jobId"],
        "pid": launch["pid"],
        "agent": "codex",
        "directory": str(tmp_path),
        "worktree": None,
        "startedAt": listed["startedAt"],
        "launcher": "tmux",
    }
    r = stop(stack, machine_id, sid)
    assert r.status_code == 200 and r.json()["stopped"] is True and r.json()["sessionId"] == sid
    assert not tmux_has(stack, sid)
    assert sid not in [s["sessionId"] for s in sessions(stack, machine_id)]
    again = stop(stack, machine_id, sid)
    assert again.status_code == 404 and again.json() == {"error": "Session not found"}


def test_sessions_outlive_an_agent_restart(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    agent = stack.start_agent(machine_id)
    sid = spawn(stack, machine_id, directory=str(tmp_path))["sessionId"]
    agent.kill()
    stack.start_agent(machine_id)
    assert tmux_has(stack, sid)
    assert sid in [s["sessionId"] for s in sessions(stack, machine_id)]
    assert stop(stack, machine_id, sid).json()["stopped"] is True


def test_stopping_a_worktree_session_keeps_the_worktree(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    stack.start_agent(machine_id)
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e"}
    for args in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run(["git", "-C", str(repo), *args], env=env, check=True)
    answer = spawn(stack, machine_id, directory=str(repo), sessionType="worktree", worktreeName="keep me")
    assert stop(stack, machine_id, answer["sessionId"]).json()["stopped"] is True
    assert Path(answer["worktree"]["path"]).is_dir()


def test_stop_answers_404_and_403_in_order(stack: Stack, machine_id: str) -> None:
    stack.start_agent(machine_id, "team")
    hub = stack.hubs[1].url
    unknown = str(uuid.uuid4())
    cases = [
        (f"{hub}/api/machines/{machine_id}/sessions/{unknown}/stop", stack.auth("team"), 404, "Session not found"),
        (f"{hub}/api/machines/{machine_id}/sessions/not-a-uuid/stop", stack.auth("team"), 404, "Session not found"),
        (f"{hub}/api/machines/{machine_id}/sessions/not-a-uuid/stop", stack.auth(), 403, "Access denied"),
        (f"{hub}/api/machines/nope/sessions/{unknown}/stop", stack.auth(), 404, "Machine not found"),
    ]
    for url, auth, status, error in cases:
        r = httpx2.post(url, headers=auth, timeout=15)
        assert (r.status_code, r.json()["error"]) == (status, error), url
    r = httpx2.get(f"{hub}/api/machines/{machine_id}/sessions", headers=stack.auth(), timeout=15)
    assert r.status_code == 403


def test_without_tmux_the_agent_uses_a_pseudo_terminal(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    agent = stack.start_agent(machine_id, PATH=str(stack.bin))  # the fake CLIs, and no tmux
    machines = httpx2.get(f"{stack.hubs[0].url}/api/machines", headers=stack.auth()).json()["machines"]
    assert next(m for m in machines if m["id"] == machine_id)["metadata"]["launcher"] == "pty"
    sid = spawn(stack, machine_id, directory=str(tmp_path))["sessionId"]
    launch = stack.launched(sid)
    assert launch["stdin_tty"] and launch["stdout_tty"]
    assert [s["launcher"] for s in sessions(stack, machine_id) if s["sessionId"] == sid] == ["pty"]
    assert stop(stack, machine_id, sid).json()["stopped"] is True
    wait_until(lambda: not sessions(stack, machine_id), 10, "the stopped session to leave the list")
    assert "tmux not found" in agent.log_text()
    agent.signal(signal.SIGTERM)


def test_prompt_reaches_the_cli_as_its_first_message(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    stack.start_agent(machine_id)
    prompt = "-fix the flaky test; then run it"
    for agent, tail in (
        ("claude", ["--", prompt]),
        ("gemini", [f"--prompt-interactive={prompt}"]),
        ("opencode", [f"--prompt={prompt}"]),
    ):
        sid = spawn(stack, machine_id, directory=str(tmp_path), agent=agent, prompt=prompt)["sessionId"]
        assert stack.launched(sid)["argv"][-len(tail) :] == tail
