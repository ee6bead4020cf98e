"""The agent's mailbox loop: it beats once per heartbeat interval, and nothing but a stop ends it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
import pytest
from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeout

from core.keys import Keys
from core.settings import Settings
from machine_agent.agent import Agent
from tests import machines

NS = "default"
MACHINE = "beat-box"


async def test_an_idle_agent_beats_every_interval(settings: Settings, redis: Redis, keys: Keys, tmp_path: Path) -> None:
    fast = msgspec.structs.replace(settings, heartbeat_interval_s=0.25, heartbeat_ttl_s=2.0, launcher="pty")
    await machines.add(redis, keys, NS, MACHINE, online=False)
    agent = Agent(fast, machine_id=MACHINE, home=tmp_path / "home", env={"PATH": str(tmp_path / "no-bin")})
    await agent.startup()
    loop = asyncio.create_task(agent.main_loop())
    try:
        # A refresh shows as a PTTL higher than the one before. 9 refreshes take about 2.25 s at one
        # per 0.25 s interval (give or take the jitter), 4.5 s at one every other interval.
        refreshes, last = 0, await redis.pttl(keys.heartbeat(NS, MACHINE))
        deadline = time.monotonic() + 3.0
        while refreshes < 9:
            assert time.monotonic() < deadline, f"only {refreshes} heartbeat refreshes in 3 s"
            await asyncio.sleep(0.02)  # the poll step
            now = await redis.pttl(keys.heartbeat(NS, MACHINE))
            refreshes, last = refreshes + (now > last), now
    finally:
        agent.should_exit.set()
        await asyncio.wait_for(loop, 10)
        await agent.shutdown()


async def test_a_job_connection_whose_close_times_out_does_not_end_the_mailbox_loop(
    settings: Settings, redis: Redis, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py waits redis_connect_timeout_s for a closed socket's goodbye; on a loaded box after
    a Redis restart it waited longer, and the idle agent's loop died of the TimeoutError."""
    fast = msgspec.structs.replace(settings, heartbeat_interval_s=0.1, heartbeat_ttl_s=2.0, launcher="pty")
    await machines.add(redis, keys, NS, MACHINE, online=False)
    agent = Agent(fast, machine_id=MACHINE, home=tmp_path / "home", env={"PATH": str(tmp_path / "no-bin")})
    closes: list[bool] = []

    async def slow_close(inuse_connections: bool = True) -> None:
        closes.append(inuse_connections)
        raise RedisTimeout("Timed out closing connection after 1.0")

    monkeypatch.setattr(agent.redis.connection_pool, "disconnect", slow_close)
    await agent.startup()
    loop = asyncio.create_task(agent.main_loop())
    try:
        deadline = time.monotonic() + 5.0
        while len(closes) < 2:  # idle for two intervals each time: tried more than once
            assert time.monotonic() < deadline, "the agent never closed its idle job connection"
            assert not loop.done(), "the mailbox loop ended"
            await asyncio.sleep(0.05)
        assert not loop.done() and agent.exit_status == 0
    finally:
        agent.should_exit.set()
        await asyncio.wait_for(loop, 10)
        monkeypatch.undo()  # the stop closes the connections for real
        await agent.shutdown()
