"""core.user_sync on three real redis-servers: what most nodes hold reaches every node."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from uuid import uuid4

import pytest
from redis import exceptions
from redis.asyncio import Redis

from core import acl, user_sync
from core.keys import Keys
from machine_hub.redis_server import RedisServer


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisServer]]:
    with ExitStack() as stack:
        started = []
        for _ in range(3):
            server = RedisServer(tmp_path_factory.mktemp("node")).start()
            stack.callback(server.kill)
            started.append(server)
        yield started


@pytest.fixture
async def nodes(servers: list[RedisServer]) -> AsyncIterator[list[Redis]]:
    clients = [Redis(host="127.0.0.1", port=s.port, socket_timeout=5) for s in servers]
    try:
        yield clients
    finally:
        for client in clients:
            await client.aclose()


@pytest.fixture
def keys() -> Keys:
    return Keys(f"t-{uuid4().hex[:8]}")  # a prefix, and so a set of users, of this test's own


async def setuser(node: Redis, name: str, password: str, keys: Keys) -> None:
    rules = acl.machine_rules(keys, "default", name.rpartition("~")[2], db=0, cluster=False)
    await node.execute_command("ACL", "SETUSER", name, "reset", "on", f">{password}", *rules)


async def held_by(node: Redis, keys: Keys) -> dict[str, list[str]]:
    """The node's users of this prefix, each with its rules in one order (ACL LIST's depends on
    the node's history)."""
    return {name: sorted(rules) for name, rules in (await user_sync.users_of(node, keys.prefix)).items()}


async def logs_in(server_port: int, name: str, password: str) -> bool:
    client = Redis(host="127.0.0.1", port=server_port, username=name, password=password, socket_timeout=5)
    try:
        return bool(await client.ping())
    except exceptions.AuthenticationError:
        return False
    finally:
        await client.aclose()


async def test_every_node_ends_with_what_most_nodes_hold(
    nodes: list[Redis], servers: list[RedisServer], keys: Keys
) -> None:
    a, b, c = nodes
    m1, gone, ghost, rotated = (acl.machine_user(keys, "default", m) for m in ("m1", "gone", "ghost", "rot"))
    for node in (a, b):  # c missed m1's `machine add`
        await setuser(node, m1, "pw-m1", keys)
    await setuser(a, gone, "pw-gone", keys)  # removed while a was down: b and c no longer have it
    await setuser(c, ghost, "pw-ghost", keys)  # the same, on c
    for node, password in ((a, "new"), (b, "new"), (c, "old")):  # c missed the rotation
        await setuser(node, rotated, password, keys)
    await c.execute_command("ACL", "SETUSER", f"{keys.prefix}-operator", "on", ">x", "+ping")  # not ours
    stale = Redis(host="127.0.0.1", port=servers[2].port, username=rotated, password="old", socket_timeout=5)
    assert await stale.ping()

    changes = await user_sync.sync(nodes, keys.prefix)

    assert [(sorted(n.written), n.deleted) for n in changes] == [
        ([], [gone]),
        ([], []),
        ([m1, rotated], [ghost]),
    ]
    held = [await held_by(node, keys) for node in nodes]
    assert held[0] == held[1] == held[2] and sorted(held[0]) == [m1, rotated]
    assert await logs_in(servers[2].port, m1, "pw-m1")
    assert await logs_in(servers[2].port, rotated, "new") and not await logs_in(servers[2].port, rotated, "old")
    assert not await logs_in(servers[0].port, gone, "pw-gone")
    with pytest.raises(exceptions.ConnectionError):  # the session opened with the old password ended
        await stale.ping()
    await stale.aclose()
    assert await c.execute_command("ACL", "GETUSER", f"{keys.prefix}-operator") is not None
    # The rules written read back the same: a second pass changes nothing.
    again = await user_sync.sync(nodes, keys.prefix)
    assert all(not n.written and not n.deleted for n in again)


async def test_on_a_tie_the_first_node_wins(nodes: list[Redis], keys: Keys) -> None:
    first, second, _ = nodes
    user = acl.machine_user(keys, "default", "m1")
    await setuser(first, user, "primary", keys)
    await setuser(second, user, "replica", keys)
    await user_sync.sync([first, second], keys.prefix)
    assert await held_by(second, keys) == await held_by(first, keys)


def test_a_selector_is_one_rule() -> None:
    name, rules = user_sync.rules_of("user mh~a on #ab ~mh:x (%W~mh:hub:*:inbox resetchannels -@all +lpush) +get")
    assert (name, rules) == ("mh~a", ("on", "#ab", "~mh:x", "(%W~mh:hub:*:inbox resetchannels -@all +lpush)", "+get"))
    with pytest.raises(ValueError, match="not an ACL LIST line"):
        user_sync.rules_of("nobody here")
