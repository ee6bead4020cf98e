"""`machine-hub machine add|remove|list` as an operator runs them, against running agents."""

from __future__ import annotations

import subprocess
import sys

import httpx2
import pytest
import redis

from core.acl import machine_user
from tests.e2e.harness import Stack, wait_until
from tests.security.conftest import client_for


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "machine_hub", *args],
        env=stack.env(),  # REDIS_URL: the admin URL
        capture_output=True,
        text=True,
        timeout=60,
    )


def listed(stack: Stack, machine_id: str, hub: int = 0) -> bool:
    r = httpx2.get(f"{stack.hubs[hub].url}/api/machines", headers=stack.auth(), timeout=10)
    return machine_id in [m["id"] for m in r.json()["machines"]]


def test_add_prints_the_agents_url_alone_on_the_last_line_and_list_shows_it(stack: Stack, machine_id: str) -> None:
    added = cli(stack, "machine", "add", "--namespace", "default", "--machine-id", machine_id)
    assert added.returncode == 0, added.stderr
    url = added.stdout.strip().splitlines()[-1]
    assert url.startswith(f"redis://{stack.keys.prefix}~default~{machine_id}:") and "Traceback" not in added.stderr
    assert client_for(url).ping()
    entries = cli(stack, "machine", "list", "--namespace", "default")
    assert any(line.split()[:2] == [machine_id, "offline"] for line in entries.stdout.splitlines()), entries.stdout
    bad = cli(stack, "machine", "add", "--namespace", "bad ns")
    assert bad.returncode == 1 and "namespace" in bad.stderr and "Traceback" not in bad.stderr


def test_adding_again_rotates_the_password_and_disconnects_the_old_one(stack: Stack, machine_id: str) -> None:
    old = cli(stack, "machine", "add", "--namespace", "default", "--machine-id", machine_id).stdout.strip()
    connected = client_for(old)
    assert connected.ping()
    new = cli(stack, "machine", "add", "--namespace", "default", "--machine-id", machine_id)
    assert "old one no longer works" in new.stderr
    with pytest.raises(redis.ConnectionError):
        connected.ping()  # the open connection was closed
    with pytest.raises(redis.AuthenticationError):
        client_for(old).ping()  # and the old password is refused
    assert client_for(new.stdout.strip()).ping()


def test_remove_ends_the_machine_within_a_second_and_its_agent_says_so(stack: Stack, machine_id: str) -> None:
    agent = stack.start_agent(machine_id)
    assert listed(stack, machine_id)
    removed = cli(stack, "machine", "remove", "--namespace", "default", machine_id)
    assert removed.returncode == 0, removed.stderr
    # Gone from every hub's list as soon as the command returns, not a heartbeat TTL later.
    assert not listed(stack, machine_id, 0) and not listed(stack, machine_id, 1)
    assert httpx2.post(
        f"{stack.hubs[0].url}/api/machines/{machine_id}/paths/exists", headers=stack.auth(), json={"paths": ["/"]}
    ).json() == {"error": "Machine not found"}
    wait_until(lambda: "Redis refused this agent's access" in agent.log_text(), 10, "the agent's one clear line")
    # It keeps trying (Redis counts each refused login) and says nothing more.
    user = machine_user(stack.keys, "default", machine_id)
    refusals = refused_logins(stack, user)
    wait_until(lambda: refused_logins(stack, user) >= refusals + 2, 10, "two more tries, refused")
    assert agent.alive() and agent.log_text().count("Redis refused this agent's access") == 1
    assert "Traceback" not in agent.log_text()
    again = cli(stack, "machine", "remove", "--namespace", "default", machine_id)
    assert again.returncode == 1 and "no machine" in again.stderr


def refused_logins(stack: Stack, user: str) -> int:
    """The logins Redis refused `user` (ACL LOG counts them; Redis 7.0's INFO does not)."""
    entries = stack.redis.acl_log(count=128)
    return sum(int(e["count"]) for e in entries if e["reason"] == "auth" and e["username"] == user)


def test_with_exit_if_removed_the_agent_stops_with_status_3(stack: Stack, machine_id: str) -> None:
    agent = stack.start_agent(machine_id, MACHINE_HUB_EXIT_IF_REMOVED="true")
    assert cli(stack, "machine", "remove", "--namespace", "default", machine_id).returncode == 0
    assert agent.popen.wait(15) == 3


def test_machine_commands_need_an_admin_url(stack: Stack, machine_id: str) -> None:
    denied = subprocess.run(
        [sys.executable, "-m", "machine_hub", "machine", "add", "--namespace", "default"],
        env=stack.env(REDIS_URL=stack.urls["hub"]),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert denied.returncode == 1 and "admin URL" in denied.stderr and "Traceback" not in denied.stderr
