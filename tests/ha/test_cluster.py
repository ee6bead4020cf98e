"""The Cluster fixture with plain redis-py: keys spread over the primaries, one-slot scripts, failover."""

from __future__ import annotations

import asyncio
import itertools
import uuid

import pytest
import redis
from redis import exceptions
from redis.cluster import key_slot

from machine_hub.redis_cluster import SLOTS, ClusterTopology
from tests.ha.clients import cluster_client, until_ok


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def slot(key: str) -> int:
    return int(key_slot(key.encode()))


def key_in_slot_range(prefix: str, first: int, last: int) -> str:
    """A key whose hash tag puts it in [first, last]."""
    return next(k for i in itertools.count() if first <= slot(k := f"{prefix}:{{m{i}}}:x") <= last)


async def test_keys_in_three_slots_land_on_three_primaries(cluster_topology: ClusterTopology, prefix: str) -> None:
    thirds = [(SLOTS * i // 3, SLOTS * (i + 1) // 3 - 1) for i in range(3)]
    keys = [key_in_slot_range(prefix, first, last) for first, last in thirds]
    async with cluster_client(cluster_topology) as client:
        for key in keys:
            await client.set(key, key)

        holders = set()
        for key in keys:
            counts = {
                n.port: n.execute("CLUSTER", "COUNTKEYSINSLOT", slot(key)) for n in cluster_topology.primaries_now()
            }
            (holder,) = [port for port, count in counts.items() if count == 1]
            assert client.get_node_from_key(key).port == holder
            holders.add(holder)
            assert await client.get(key) == key.encode()
    assert len(holders) == 3


async def test_a_script_runs_over_keys_with_one_hash_tag_and_cross_slot_keys_are_refused(
    cluster_topology: ClusterTopology, prefix: str
) -> None:
    body = (
        "redis.call('RPUSH', KEYS[1], ARGV[1]); redis.call('SET', KEYS[2], ARGV[1]); return redis.call('LLEN', KEYS[1])"
    )
    tagged = [f"{prefix}:{{m1}}:list", f"{prefix}:{{m1}}:last"]
    async with cluster_client(cluster_topology) as client:
        script = client.register_script(body)
        assert await script(keys=tagged, args=["a"]) == 1
        assert await script(keys=tagged, args=["b"]) == 2
        assert await client.get(tagged[1]) == b"b"

        cross = [tagged[0], f"{prefix}:{{m2}}:last"]
        assert slot(cross[0]) != slot(cross[1])
        with pytest.raises(exceptions.RedisClusterException, match="same key slot"):
            await script(keys=cross, args=["c"])  # redis-py refuses before sending
    owner = cluster_topology.owner(slot(cross[0]))
    with pytest.raises(redis.ResponseError, match="CROSSSLOT"):  # and so does the server
        owner.execute("EVAL", body, 2, *cross, "c")


async def test_a_killed_primary_is_replaced_by_its_replica(cluster_topology: ClusterTopology, prefix: str) -> None:
    key = f"{prefix}:{{m1}}:x"
    victim = cluster_topology.owner(slot(key))
    followers = [n for n in cluster_topology.nodes if n.execute("ROLE")[:3:2] == ["slave", victim.port]]
    async with cluster_client(cluster_topology) as client:
        await client.set(key, "before")
        node = client.get_node_from_key(key)
        assert await client.execute_command("WAIT", 1, 2000, target_nodes=node) == 1

        cluster_topology.kill(victim)
        await asyncio.to_thread(cluster_topology.wait_healthy)

        successor = cluster_topology.owner(slot(key))
        assert successor in followers
        assert await until_ok(lambda: client.get(key), "the client reads from the new owner") == b"before"
        await client.set(key, "after")
        assert successor.execute("GET", key) == "after"

    await asyncio.to_thread(cluster_topology.restart, victim)
    role = victim.execute("ROLE")
    assert (role[0], role[2]) == ("slave", successor.port)


async def test_a_hung_primary_is_replaced_and_rejoins_as_a_replica_when_it_wakes(
    cluster_topology: ClusterTopology, prefix: str
) -> None:
    key = f"{prefix}:{{m2}}:x"
    hung = cluster_topology.owner(slot(key))
    async with cluster_client(cluster_topology) as client:
        await client.set(key, "before")
        assert await client.execute_command("WAIT", 1, 2000, target_nodes=client.get_node_from_key(key)) == 1

        cluster_topology.pause(hung)
        await asyncio.to_thread(cluster_topology.wait_healthy)
        successor = cluster_topology.owner(slot(key))
        assert successor is not hung
        assert await until_ok(lambda: client.get(key), "the client reads from the new owner") == b"before"

    hung.resume()
    await asyncio.to_thread(cluster_topology.wait_healthy)
    role = hung.execute("ROLE")
    assert (role[0], role[2]) == ("slave", successor.port)


def test_acl_users_exist_only_on_the_nodes_they_were_set_on(cluster_topology: ClusterTopology) -> None:
    user = f"machine-{uuid.uuid4().hex[:6]}"
    every = cluster_topology.execute_on_all_nodes("ACL", "SETUSER", user, "on", ">pw", "~*", "+@all")
    assert set(every) == {n.port for n in cluster_topology.nodes} and set(every.values()) == {"OK"}
    lonely = cluster_topology.primaries_now()[0]
    lonely.execute("ACL", "SETUSER", f"{user}-lonely", "on", ">pw", "~*", "+@all")

    def logs_in(port: int, username: str) -> bool:
        with redis.Redis(port=port, username=username, password="pw", socket_timeout=2) as client:
            try:
                return bool(client.ping())
            except exceptions.AuthenticationError:
                return False

    assert all(logs_in(n.port, user) for n in cluster_topology.nodes)
    assert [n.port for n in cluster_topology.nodes if logs_in(n.port, f"{user}-lonely")] == [lonely.port]
