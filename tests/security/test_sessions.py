"""What a session inherits from the agent, the agent's files, and arguments that could turn into
options or commands: a session runs as the agent's OS user, so it must not get more than that."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx2

from tests.e2e.harness import Stack


def spawn(stack: Stack, machine_id: str, body: dict[str, object]) -> httpx2.Response:
    return httpx2.post(
        f"{stack.hubs[0].url}/api/machines/{machine_id}/spawn", headers=stack.auth(), json=body, timeout=30
    )


def test_a_session_sees_no_credential_of_the_agent_or_of_any_other_machine(stack: Stack, machine_id: str) -> None:
    neighbour = f"{machine_id}-b"
    stack.start_agent(neighbour)
    agent_url = stack.machine_url("default", machine_id)
    stack.start_agent(
        machine_id,
        CLI_API_TOKEN="agent-side-secret",
        REDIS_PASSWORD="x",
        MACHINE_HUB_ROOTS=str(stack.tmp),
        FAKE_CLI_RECORD_PROC="1",
    )
    r = spawn(stack, machine_id, {"directory": str(stack.tmp / "work")}).json()
    assert r["success"] is True, r
    launch = stack.launched(r["sessionId"])
    environ: dict[str, str] = launch["environ"]
    leaked = [
        k
        for k in environ
        if k.startswith(("REDIS_", "CLI_API_TOKEN")) or (k.startswith("MACHINE_HUB_") and k not in SESSION_VARIABLES)
    ]
    assert leaked == []
    secrets = [stack.machine_url("default", neighbour), *stack.urls.values(), stack.settings.redis_url]
    passwords = [url.split("@")[0].rsplit(":", 1)[-1] for url in secrets if "@" in url]
    seen = "\n".join([*environ.values(), *(a["environ"] + a["cmdline"] for a in launch["ancestors"])])
    assert passwords and not [p for p in passwords if p in seen]
    assert agent_url.split("@")[0].rsplit(":", 1)[-1] not in "".join(environ.values())


SESSION_VARIABLES = {
    "MACHINE_HUB_SESSION_ID",
    "MACHINE_HUB_JOB_ID",
    "MACHINE_HUB_MACHINE_ID",
    "MACHINE_HUB_NAMESPACE",
    "MACHINE_HUB_WORKTREE_PATH",
    "MACHINE_HUB_WORKTREE_BRANCH",
    "MACHINE_HUB_WORKTREE_BASE_PATH",
}


def test_the_agents_home_and_files_are_its_users_alone(stack: Stack, machine_id: str) -> None:
    stack.start_agent(machine_id)
    r = spawn(stack, machine_id, {"directory": str(stack.tmp / "files")}).json()
    assert r["success"] is True, r
    home = stack.tmp / "agents" / f"default-{machine_id}"
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    files = [home / "journal.jsonl", home / "sessions.json", home / "agent.lock"]
    files += list((home / "sessions" / r["sessionId"]).iterdir())
    for path in files:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == 0o600, (path, oct(mode))
    assert stat.S_IMODE((home / "sessions" / r["sessionId"]).stat().st_mode) == 0o700


def test_a_model_that_would_be_an_option_is_refused(stack: Stack, machine_id: str) -> None:
    stack.start_agent(machine_id)
    # The agent trims the model before it passes it, so blanks in front hide no '-'.
    for model in ("-rf", "--dangerously-skip-permissions", " ", " --dangerously-skip-permissions", "\t-rf"):
        r = spawn(stack, machine_id, {"directory": str(stack.tmp), "model": model})
        assert r.status_code == 400 and "$.model" in r.json()["detail"], r.text


def test_a_directory_with_tmux_separators_reaches_tmux_literally(stack: Stack, machine_id: str) -> None:
    stack.start_agent(machine_id)
    for name in ("semi;", "a ; kill-server", "b \\; c", "#{pane_pid}"):
        directory: Path = stack.tmp / "odd" / name
        r = spawn(stack, machine_id, {"directory": str(directory)}).json()
        assert r["success"] is True, (name, r)
        assert stack.launched(r["sessionId"])["cwd"] == str(directory)
        assert directory.is_dir()
