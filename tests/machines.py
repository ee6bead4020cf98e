"""Machines in Redis for tests, written through the same code as `machine add` and the agent.

`add` registers a machine (core.registry.Registry.register, as `machine add` does), announces its
metadata and, when `online`, writes a heartbeat as the agent does; nothing here hand-builds a key.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import fakeredis
from redis.asyncio import Redis

from core.keys import Keys
from core.lua import Scripts
from core.machine_schemas import Beat, MachineMetadata
from core.registry import Registry

METADATA = MachineMetadata(hostname="h", platform="linux", version="1")

# What a listing shows of a machine `add` made: HAPI's metadata announced, beating, nothing set.
FLEET_DEFAULTS = {
    "displayName": None,
    "agents": None,
    "labels": {},
    "maxSessions": None,
    "sessions": 0,
    "health": None,
    "drained": False,
}


async def add(
    redis: Redis,
    keys: Keys,
    ns: str,
    machine_id: str,
    *,
    online: bool = True,
    metadata: MachineMetadata = METADATA,
    instance: str | None = None,
    ttl_ms: int = 60_000,
) -> str:
    """Register (and announce, and when online beat for) a machine; returns the beat's instance."""
    registry = Registry(redis, keys, Scripts(redis, can_load=True))
    assert await registry.register(ns, machine_id), f"{machine_id} belongs to another namespace"
    async with redis.pipeline(transaction=False) as pipe:
        registry.announce(pipe, ns, machine_id, metadata)
        await pipe.execute()
    instance = instance or uuid.uuid4().hex
    if online:
        await beat(redis, keys, ns, machine_id, instance, ttl_ms=ttl_ms)
    return instance


async def beat(redis: Redis, keys: Keys, ns: str, machine_id: str, instance: str, *, ttl_ms: int = 60_000) -> Any:
    registry = Registry(redis, keys, Scripts(redis, can_load=True))
    async with redis.pipeline(transaction=False) as pipe:
        registry.beat(pipe, ns, machine_id, instance, Beat(ttl_ms=ttl_ms))
        return (await pipe.execute())[0]


def add_sync(sync_redis: fakeredis.FakeRedis, keys: Keys, ns: str, machine_id: str, **options: Any) -> str:
    """`add` for tests that hold a synchronous fakeredis client (the server is shared)."""
    server = sync_redis.connection_pool.connection_kwargs["server"]

    async def go() -> str:
        client = fakeredis.FakeAsyncRedis(server=server)
        try:
            return await add(client, keys, ns, machine_id, **options)
        finally:
            await client.aclose()

    return asyncio.run(go())
