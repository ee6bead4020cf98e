"""Machine registration, heartbeats, listings and state changes on a real Redis."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from core import listing, stats
from core.events import MachineEvent, decode
from core.keys import Keys
from core.listing import machine_page
from core.lua import Scripts
from core.machine_schemas import Beat, MachineMetadata
from core.registry import Ownership, Registry, decode_beat
from tests import machines
from tests.integration.conftest import commands_during
from tests.waiting import redis_ms, until

NS = "team"
OTHER_NS = "other"
INSTANCE = "a" * 32
OTHER_INSTANCE = "b" * 32


@pytest.fixture
def registry(redis: Redis, keys: Keys) -> Registry:
    return Registry(redis, keys, Scripts(redis, can_load=True))


async def machine_events(redis: Redis, keys: Keys, ns: str = NS) -> list[MachineEvent]:
    entries = await redis.xrange(keys.events(ns))
    return [e for e in (decode(f[b"e"]) for _, f in entries) if isinstance(e, MachineEvent)]


async def test_register_claims_the_id_once_and_counts_it_once(registry: Registry, redis: Redis, keys: Keys) -> None:
    assert await registry.register(NS, "box-1")
    assert await registry.register(NS, "box-1")  # idempotent
    assert not await registry.register(OTHER_NS, "box-1")  # ids are unique across namespaces
    assert await redis.get(keys.owner("box-1")) == NS.encode()
    assert await redis.zrange(keys.machines(NS), 0, -1) == [b"box-1"]
    assert not await redis.exists(keys.machines(OTHER_NS), keys.reg(OTHER_NS, "box-1"))
    assert await stats.read(redis, keys) == {NS: {stats.REGISTERED: 1}}


async def test_ownership_is_mine_foreign_or_unknown(registry: Registry, redis: Redis, keys: Keys) -> None:
    await registry.register(NS, "box-1")
    assert await registry.ownership(NS, "box-1") is Ownership.MINE
    assert await registry.ownership(OTHER_NS, "box-1") is Ownership.FOREIGN
    assert await registry.ownership(NS, "nobody") is Ownership.UNKNOWN


async def test_a_beat_tells_whether_this_instance_held_the_heartbeat(redis: Redis, keys: Keys) -> None:
    await machines.add(redis, keys, NS, "box-1", online=False)
    assert await machines.beat(redis, keys, NS, "box-1", INSTANCE) is None
    held = await machines.beat(redis, keys, NS, "box-1", INSTANCE)
    assert decode_beat(held) is not None and decode_beat(held)[0] == INSTANCE  # type: ignore[index]
    assert decode_beat(await machines.beat(redis, keys, NS, "box-1", OTHER_INSTANCE))[0] == INSTANCE  # type: ignore[index]


async def test_release_removes_only_this_instances_heartbeat(registry: Registry, redis: Redis, keys: Keys) -> None:
    await machines.add(redis, keys, NS, "box-1", instance=INSTANCE)
    await registry.release(NS, "box-1", OTHER_INSTANCE)
    assert await redis.exists(keys.heartbeat(NS, "box-1"))
    await registry.release(NS, "box-1", INSTANCE)
    assert not await redis.exists(keys.heartbeat(NS, "box-1"))


async def test_rows_give_online_machines_a_redis_clock_last_seen(registry: Registry, redis: Redis, keys: Keys) -> None:
    meta = MachineMetadata(hostname="box", platform="linux", version="1.2.3", launcher="tmux")
    before = await redis_ms(redis)
    await machines.add(redis, keys, NS, "on", metadata=meta)
    await machines.add(redis, keys, NS, "off", online=False)
    await redis.hset(keys.reg(NS, "off"), "lastSeenMs", 1234)
    await redis.lpush(keys.mailbox(NS, "off"), b"x")
    on, off = await listing.rows(registry, NS, ["on", "off"])
    assert on.online and on.info is not None and on.info.metadata() == meta and on.last_seen is not None
    assert before <= on.last_seen <= await redis_ms(redis)
    assert (off.online, off.last_seen, off.queue_depth, off.beat) == (False, 1234, 1, None)


async def test_a_heartbeat_drops_out_after_its_ttl(registry: Registry, redis: Redis, keys: Keys) -> None:
    await machines.add(redis, keys, NS, "box-1", ttl_ms=100)
    assert (await listing.rows(registry, NS, ["box-1"]))[0].online

    async def expired() -> bool:
        return not await redis.exists(keys.heartbeat(NS, "box-1"))

    await until(expired, "the heartbeat's TTL ran out")
    assert not (await listing.rows(registry, NS, ["box-1"]))[0].online


async def test_mark_changes_state_once_and_only_while_the_heartbeat_agrees(
    registry: Registry, redis: Redis, keys: Keys
) -> None:
    await machines.add(redis, keys, NS, "box-1", instance=INSTANCE)
    assert await registry.mark(NS, "box-1", "offline") == 0  # it beats: not offline
    assert await registry.mark(NS, "box-1", "online") == 1
    assert await registry.mark(NS, "box-1", "online") == 0
    await redis.delete(keys.heartbeat(NS, "box-1"))
    assert await registry.mark(NS, "box-1", "online") == 0
    assert await registry.mark(NS, "box-1", "offline", last_seen_ms=42) == 1
    assert await redis.hget(keys.reg(NS, "box-1"), "lastSeenMs") == b"42"
    assert await registry.mark(NS, "nobody", "offline") == -1
    assert [e.state for e in await machine_events(redis, keys)] == ["online", "offline"]
    assert (await stats.read(redis, keys))[NS][stats.ONLINE] == 0


async def test_a_machine_never_seen_online_is_not_counted_offline(registry: Registry, redis: Redis, keys: Keys) -> None:
    await machines.add(redis, keys, NS, "box-1", instance=INSTANCE)
    await redis.delete(keys.heartbeat(NS, "box-1"))
    assert await registry.mark(NS, "box-1", "offline") == 2  # no event: it was never anything else
    await machines.beat(redis, keys, NS, "box-1", INSTANCE)
    assert await registry.mark(NS, "box-1", "online") == 1
    assert (await stats.read(redis, keys))[NS][stats.ONLINE] == 1
    assert [e.state for e in await machine_events(redis, keys)] == ["online"]
    assert await registry.mark(NS, "box-1", "offline") == 0  # it beats


async def test_pages_walk_the_index_in_id_order(registry: Registry, redis: Redis, keys: Keys) -> None:
    for i in range(25):
        await machines.add(redis, keys, NS, f"m{i:02d}", online=i % 5 == 0)
    await machines.add(redis, keys, OTHER_NS, "theirs")
    every, after = [], None
    while True:
        page = await machine_page(registry, NS, after=after, limit=7, online_only=False)
        every += [r.machine_id for r in page.rows]
        if page.next_after is None:
            break
        after = page.next_after
    assert every == [f"m{i:02d}" for i in range(25)]
    online = await machine_page(registry, NS, after=None, limit=10, online_only=True)
    assert [r.machine_id for r in online.rows] == ["m00", "m05", "m10", "m15", "m20"] and online.next_after is None


async def test_an_online_page_walks_a_bounded_number_of_offline_machines(
    registry: Registry, redis: Redis, keys: Keys
) -> None:
    for i in range(40):
        await machines.add(redis, keys, NS, f"m{i:02d}", online=i == 39)
    page = await machine_page(registry, NS, after=None, limit=2, online_only=True)
    assert page.rows == [] and page.next_after == "m19"  # 2 x 10 walked: a short page and a cursor
    rest = await machine_page(registry, NS, after=page.next_after, limit=2, online_only=True)
    assert [r.machine_id for r in rest.rows] == ["m39"] and rest.next_after is None


async def _fleet(redis: Redis, keys: Keys, ns: str, count: int) -> None:
    """`count` machines, one in three online, written in pipelines (a fleet, quickly)."""
    registry = Registry(redis, keys, Scripts(redis, can_load=True))
    for start in range(0, count, 500):
        ids = [f"m{i:05d}" for i in range(start, min(count, start + 500))]
        await asyncio.gather(*(registry.register(ns, machine_id) for machine_id in ids))
        async with redis.pipeline(transaction=False) as pipe:
            for i, machine_id in enumerate(ids, start):
                if i % 3 == 0:
                    registry.beat(pipe, ns, machine_id, INSTANCE, Beat(ttl_ms=60_000))
            await pipe.execute()


@pytest.mark.parametrize("online_only", [True, False])
async def test_a_page_costs_the_same_whatever_the_size_of_the_namespace(
    registry: Registry, redis: Redis, keys: Keys, online_only: bool
) -> None:
    await _fleet(redis, keys, "small", 600)  # either has more than a page after the cursor
    await _fleet(redis, keys, "large", 3000)
    costs = []
    for ns in ("small", "large"):
        page, cost = await commands_during(
            redis, lambda ns=ns: machine_page(registry, ns, after="m00100", limit=50, online_only=online_only)
        )
        assert len(page.rows) == 50 and page.next_after is not None
        costs.append(cost)
    assert costs[0] == costs[1]


async def test_a_full_page_of_online_machines_reads_only_its_own_rows(
    registry: Registry, redis: Redis, keys: Keys
) -> None:
    for i in range(250):
        await machines.add(redis, keys, NS, f"m{i:03d}")
    page, cost = await commands_during(
        redis, lambda: machine_page(registry, NS, after=None, limit=100, online_only=True)
    )
    assert [r.machine_id for r in page.rows] == [f"m{i:03d}" for i in range(100)] and page.next_after == "m099"
    assert cost == 1 + 1 + 4 * 100  # the ids, TIME, and four reads per row: no second batch of rows
