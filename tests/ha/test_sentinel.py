"""The Sentinel fixture with plain redis-py: clients find the primary, and a killed primary is replaced."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis import exceptions

from machine_hub.redis_sentinel import SentinelTopology
from tests.ha.clients import primary_via_sentinel, until_ok


@pytest.fixture
def key() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


async def test_sentinels_report_the_primary_the_client_writes_to(sentinel_topology: SentinelTopology, key: str) -> None:
    async with primary_via_sentinel(sentinel_topology) as primary:
        await primary.set(key, "v")
        assert sentinel_topology.primary_address() == primary.connection_pool.master_address
        assert sentinel_topology.primary().execute("GET", key) == "v"


async def test_after_the_primary_is_killed_writes_reach_the_promoted_replica(
    sentinel_topology: SentinelTopology, key: str
) -> None:
    async with primary_via_sentinel(sentinel_topology) as primary:
        await primary.set(key, "before")
        assert await primary.wait(1, 2000) == 1  # the replica has it

        killed = sentinel_topology.kill_primary()
        promoted = await asyncio.to_thread(sentinel_topology.wait_failover)

        assert promoted is not killed and promoted.execute("ROLE")[0] == "master"
        assert sentinel_topology.primary_address() == promoted.address
        await until_ok(lambda: primary.set(key, "after"), "a write reaches the new primary")
        assert promoted.execute("GET", key) == "after"

    await asyncio.to_thread(sentinel_topology.restart, killed)
    role = killed.execute("ROLE")
    assert (role[0], role[2]) == ("slave", promoted.port)
    assert killed.execute("GET", key) == "after"


async def test_a_hung_primary_is_replaced_and_becomes_a_replica_when_it_wakes(
    sentinel_topology: SentinelTopology, key: str
) -> None:
    async with primary_via_sentinel(sentinel_topology) as primary:
        await primary.set(key, "before")
        assert await primary.wait(1, 2000) == 1

        hung = sentinel_topology.pause_primary()
        promoted = await asyncio.to_thread(sentinel_topology.wait_failover)
        await until_ok(lambda: primary.set(key, "after"), "a write reaches the new primary")

    hung.resume()  # it wakes as a primary; the sentinels demote it
    await asyncio.to_thread(sentinel_topology.wait_healthy)
    role = hung.execute("ROLE")
    assert (role[0], role[2]) == ("slave", promoted.port)
    assert hung.execute("GET", key) == "after"


async def test_acl_users_must_be_set_on_every_node_to_survive_a_failover(sentinel_topology: SentinelTopology) -> None:
    user = f"machine-{uuid.uuid4().hex[:6]}"
    own_key = f"t:{{{user}}}:x"
    assert set(
        sentinel_topology.execute_on_all_nodes(
            "ACL", "SETUSER", user, "on", ">pw", f"~t:{{{user}}}:*", "+@all"
        ).values()
    ) == {"OK"}
    sentinel_topology.primary().execute("ACL", "SETUSER", "primary-only", "on", ">pw", "~*", "+@all")

    async with primary_via_sentinel(sentinel_topology, username=user, password="pw") as client:
        await client.set(own_key, "1")
        with pytest.raises(exceptions.NoPermissionError):
            await client.set("t:{someone-else}:x", "1")

        killed = sentinel_topology.kill_primary()
        await asyncio.to_thread(sentinel_topology.wait_failover)
        await until_ok(lambda: client.set(own_key, "2"), f"{user} writes on the new primary")

    async with primary_via_sentinel(sentinel_topology, username="primary-only", password="pw") as client:
        with pytest.raises(exceptions.AuthenticationError):
            await client.ping()

    await asyncio.to_thread(sentinel_topology.restart, killed)
    # Without an ACL file a restarted node comes back without the users set on it before.
    assert killed.execute("ACL", "GETUSER", user) is None
