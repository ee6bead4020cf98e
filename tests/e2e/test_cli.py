"""The machine-hub command as a user runs it: tokens, namespaces, agent identity and `dev`."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx2
import pytest

from machine_hub.redis_server import free_port
from tests.e2e.harness import Stack, wait_until


def cli(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "machine_hub", *args],
        env=stack.env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=stack.tmp,
    )


def test_issued_token_grants_its_namespace_until_revoked(stack: Stack, machine_id: str) -> None:
    stack.start_agent(machine_id, "team")
    created = cli(stack, "token", "create", "--namespace", "team")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("mh_") and "cannot be shown again" in created.stderr
    bearer = {"Authorization": f"Bearer {token}"}
    machines = httpx2.get(f"{stack.hubs[0].url}/api/machines", headers=bearer).json()["machines"]
    assert [m["id"] for m in machines] == [machine_id]
    assert all(m["namespace"] == "team" for m in machines)

    listed = cli(stack, "token", "list", "--namespace", "team")
    token_id = listed.stdout.split()[0]
    assert re.fullmatch(r"[0-9a-f]{12}", token_id)
    assert token.endswith(".team")
    stored = stack.redis.hget(stack.keys.tokens("team"), hashlib.sha256(token.encode()).hexdigest())
    assert stored is not None and token.encode() not in stored
    assert cli(stack, "token", "revoke", "--namespace", "team", token_id).returncode == 0
    r = httpx2.get(f"{stack.hubs[1].url}/api/machines", headers=bearer)
    assert r.status_code == 401 and r.json() == {"error": "Invalid token"}
    again = cli(stack, "token", "revoke", "--namespace", "team", token_id)
    assert again.returncode == 1 and "no token" in again.stderr


def test_namespaces_are_isolated(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    stack.start_agent(machine_id, "team")
    for hub in stack.hubs:
        listed = httpx2.get(f"{hub.url}/api/machines", headers=stack.auth()).json()["machines"]
        assert machine_id not in [m["id"] for m in listed]
        for route, body in (("spawn", {"directory": str(tmp_path)}), ("paths/exists", {"paths": ["/"]})):
            r = httpx2.post(f"{hub.url}/api/machines/{machine_id}/{route}", headers=stack.auth(), json=body)
            assert r.status_code == 403 and r.json() == {"error": "Access denied"}
        r = httpx2.post(
            f"{hub.url}/api/machines/{machine_id}/paths/exists", headers=stack.auth("team"), json={"paths": ["/"]}
        )
        assert r.json() == {"exists": {"/": True}}


def test_a_machine_id_belongs_to_one_namespace(stack: Stack, machine_id: str) -> None:
    stack.start_agent(machine_id, "team")
    again = cli(stack, "machine", "add", "--namespace", "other", "--machine-id", machine_id)
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert f"machine id '{machine_id}' belongs to another namespace" in again.stderr
    # The team machine's own URL does not work for another namespace either.
    home = stack.tmp / "agents" / f"other-{machine_id}"
    agent = stack._spawn(
        "agent-other",
        ["agent", "--namespace", "other", "--machine-id", machine_id, "--home", str(home), "--exit-if-removed"],
        stack.env(REDIS_URL=stack.machine_url("team", machine_id)),
    )
    assert agent.popen.wait(20) == 3
    assert "Redis refused this agent's access to machine" in agent.log_text()
    assert "Traceback" not in agent.log_text()


def test_agent_keeps_the_id_it_made(stack: Stack, tmp_path: Path) -> None:
    home = tmp_path / "agent-home"
    log = tmp_path / "agent.log"
    args = ["agent", "--namespace", "solo", "--home", str(home)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "machine_hub", *args],
            env=stack.env(HOME=str(tmp_path)),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        machine_id = wait_until(
            lambda: (home / "machine-id").exists() and (home / "machine-id").read_text().strip(),
            what="the machine id file",
        )
        assert re.fullmatch(r"machine_[0-9a-f]{16}", machine_id)
        stack.wait_online("solo", machine_id)
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(20) == 0, log.read_text()
        except subprocess.TimeoutExpired:
            raise AssertionError(f"agent did not stop on SIGTERM:\n{log.read_text()}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not stack.redis.exists(stack.keys.heartbeat("solo", machine_id)), "a clean stop deletes the heartbeat"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["agent", "--namespace", "bad/ns"], "Invalid value for '--namespace'"),
        (["agent", "--machine-id", "{bad}"], "machine id '{bad}' must match"),
        (["token", "create"], "Missing option '--namespace'"),
        (["api", "--port", "x"], "is not a valid integer"),
    ],
)
def test_bad_options_get_a_readable_message(stack: Stack, args: list[str], message: str) -> None:
    result = cli(stack, *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_environment_gets_a_readable_message(stack: Stack) -> None:
    result = cli(stack, "agent", MACHINE_HUB_HEARTBEAT_INTERVAL_S="soon")
    assert result.returncode == 1
    assert "heartbeat_interval_s" in result.stderr and "Traceback" not in result.stderr


def test_sync_users_on_one_redis_has_nothing_to_do(stack: Stack) -> None:
    result = cli(stack, "sync-users")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no changes: every data node (1) holds the same users"


# A Cluster client raises RedisClusterException (no RedisError) when no node answers.
CLUSTER = {"MACHINE_HUB_REDIS_CLUSTER": "1", "MACHINE_HUB_WORKER_REDIS_URL": "redis://127.0.0.1:1/0"}


@pytest.mark.parametrize("topology", [{}, CLUSTER], ids=["plain", "cluster"])
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["token", "list", "--namespace", "team"], "cannot reach Redis"),
        (["machine", "add", "--namespace", "team"], "cannot use Redis at REDIS_URL"),
        (["webhook", "list", "--namespace", "team"], "cannot use Redis at REDIS_URL"),
        (["sync-users"], "cannot use Redis at REDIS_URL"),
        (["agent", "status", "--machine-id", "m1"], "unreachable"),
    ],
)
def test_commands_without_redis_say_so(stack: Stack, topology: dict[str, str], args: list[str], message: str) -> None:
    result = cli(stack, *args, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", **topology)
    assert result.returncode == 1
    assert message in result.stdout + result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [[], ["api"], ["agent"], ["token"], ["token", "create"], ["dev"], ["sync-users"]])
def test_every_command_has_help(stack: Stack, command: list[str]) -> None:
    result = cli(stack, *command, "--help")
    assert result.returncode == 0 and "Usage:" in result.stdout


def test_dev_runs_hub_and_agent_and_stops_on_ctrl_c(stack: Stack, tmp_path: Path) -> None:
    port = str(free_port())
    env = stack.env(HOME=str(tmp_path), PYTHONFAULTHANDLER="1")
    env.pop("CLI_API_TOKEN")
    # Started with SIGINT ignored, as a script's background job starts it: Ctrl-C must stop it anyway.
    ignoring = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); os.execv(sys.argv[1], sys.argv[1:])"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", ignoring, sys.executable, "-m", "machine_hub", "dev", "--port", port],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        token_line = wait_until(
            lambda: next((x for x in lines if x.startswith("token: ")), None), 30, "dev to print a token"
        )
        token = token_line.split()[1]
        assert any(
            f"curl -s -H 'Authorization: Bearer {token}' http://127.0.0.1:{port}/api/machines" in x for x in lines
        )
        r = httpx2.get(f"http://127.0.0.1:{port}/api/machines", headers={"Authorization": f"Bearer {token}"})
        assert len(r.json()["machines"]) == 1
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(20) == 0
        except subprocess.TimeoutExpired:
            tree = ["ps", "-o", "pid,ppid,stat,wchan:20,etime,args", "--ppid", str(proc.pid), "-p", str(proc.pid)]
            left = subprocess.run(tree, capture_output=True).stdout.decode()
            proc.send_signal(signal.SIGABRT)  # faulthandler prints where dev's threads are
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            reader.join(5)
            raise AssertionError(f"dev still ran:\n{left}\n{''.join(lines[-60:])}") from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # what is left of dev and what it started (they hold its stdout)
        proc.wait()
        reader.join(5)
        assert proc.stdout is not None
        proc.stdout.close()
    with pytest.raises(httpx2.TransportError):
        httpx2.get(f"http://127.0.0.1:{port}/api/machines", timeout=1)
    assert not os.path.exists(tmp_path / ".machine-hub" / "redis"), "an external Redis was used, none started"
