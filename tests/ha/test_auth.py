"""Topologies with a login: an ACL file on every data node (sentinels and replicas log in as its
admin user), or `requirepass`; and extra server arguments (keyspace notifications) on every node."""

from __future__ import annotations

import asyncio

import pytest
from redis import exceptions

from machine_hub.redis_cluster import ClusterTopology
from machine_hub.redis_sentinel import SentinelTopology
from machine_hub.redis_server import Credentials
from tests.ha.clients import cluster_client, primary_via_sentinel, until_ok
from tests.ha.conftest import ClusterFactory, SentinelFactory

ADMIN = Credentials(password="admin-pw", username="admin")
ACL = """\
user default off
user admin on >admin-pw ~* &* +@all
user machine-a on >a-pw ~t:{a}:* -@all +@read +@write +ping +hello
"""
NOTIFY = ("--notify-keyspace-events", "Kgn")


@pytest.fixture(scope="module")
def sentinel_with_acl(start_sentinel_topology: SentinelFactory) -> SentinelTopology:
    return start_sentinel_topology(master_name="mh", credentials=ADMIN, acl=ACL, server_args=NOTIFY)


@pytest.fixture(scope="module")
def cluster_with_password(start_cluster_topology: ClusterFactory) -> ClusterTopology:
    return start_cluster_topology(replicas=True, credentials=Credentials(password="cluster pw"), server_args=NOTIFY)


async def test_a_sentinel_topology_with_an_acl_file_fails_over_and_keeps_its_users(
    sentinel_with_acl: SentinelTopology,
) -> None:
    async with primary_via_sentinel(sentinel_with_acl) as anonymous:
        with pytest.raises(exceptions.AuthenticationError):
            await anonymous.ping()
    for node in sentinel_with_acl.nodes:
        _, value = node.execute("CONFIG", "GET", "notify-keyspace-events")
        assert set(value) == set("Kgn")

    async with primary_via_sentinel(sentinel_with_acl, username="machine-a", password="a-pw") as machine:
        await machine.set("t:{a}:x", "1")
        with pytest.raises(exceptions.NoPermissionError):
            await machine.set("t:{b}:x", "1")

        killed = sentinel_with_acl.kill_primary()
        promoted = await asyncio.to_thread(sentinel_with_acl.wait_failover)
        await until_ok(lambda: machine.set("t:{a}:x", "2"), "machine-a writes on the promoted replica")
    assert promoted.execute("GET", "t:{a}:x") == "2"
    await asyncio.to_thread(sentinel_with_acl.restart, killed)


async def test_a_cluster_with_a_password_fails_over(cluster_with_password: ClusterTopology) -> None:
    key = "t:{a}:x"
    async with cluster_client(cluster_with_password, password="cluster pw") as client:
        await client.set(key, "1")
        victim = cluster_with_password.owner(client.keyslot(key))
        cluster_with_password.kill(victim)
        await asyncio.to_thread(cluster_with_password.wait_healthy)
        assert await until_ok(lambda: client.get(key), "the new owner answers") == b"1"
    with pytest.raises(exceptions.AuthenticationError):
        cluster_with_password.nodes[1].execute("AUTH", "wrong")
