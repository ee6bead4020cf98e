"""An agent process's footprint on Redis: one connection while idle, a second only while it works."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx2

from core.acl import machine_user
from tests.e2e.harness import Stack, wait_until


def connections(stack: Stack, user: str) -> int:
    return sum(1 for client in stack.redis.client_list() if client.get("user") == user)


def test_an_idle_agent_holds_one_connection_and_a_working_one_gives_its_second_back(
    stack: Stack, tmp_path: Path
) -> None:
    machine_id = f"m-{uuid.uuid4().hex[:8]}"
    user = machine_user(stack.keys, "default", machine_id)
    stack.start_agent(machine_id)
    info_key = stack.keys.info("default", machine_id)

    # Its metadata, and then the CLIs it found, ride on the mailbox loop's one connection.
    def probed() -> bool:
        assert connections(stack, user) <= 1
        info = stack.redis.get(info_key)
        return info is not None and json.loads(info).get("agents") is not None

    wait_until(probed, 20, "the machine's metadata with the CLIs it found")
    heartbeat = stack.keys.heartbeat("default", machine_id)
    last = [stack.redis.pttl(heartbeat)]

    def beat_seen() -> bool:  # a refresh shows as a PTTL higher than the one read before it
        now = stack.redis.pttl(heartbeat)
        refreshed, last[0] = now > last[0], now
        return refreshed

    for _ in range(5):  # across several heartbeats
        wait_until(beat_seen, 5, "the next heartbeat")
        assert connections(stack, user) == 1
    hub = stack.hubs[0]
    r = httpx2.post(
        f"{hub.url}/api/machines/{machine_id}/spawn",
        headers=stack.auth(),
        json={"directory": str(tmp_path)},
        timeout=10,
    )
    assert r.json()["success"] is True
    assert connections(stack, user) == 2  # the job's writes went on a second connection
    # Idle for two heartbeat intervals, the agent closes it again.
    wait_until(lambda: connections(stack, user) == 1, 10, "the job connection to close")

    # Redis loses the machine's keys (a restart without persistence): the next beat finds its
    # heartbeat gone, and the metadata goes again, ahead of the next pop, on the same connection.
    stack.redis.delete(heartbeat, info_key)

    def announced_again() -> bool:
        assert connections(stack, user) <= 1
        return bool(stack.redis.exists(info_key))

    wait_until(announced_again, 10, "the machine's metadata announced again")
    assert json.loads(stack.redis.get(info_key))["agents"] is not None
