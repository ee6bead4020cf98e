"""Machine registration, heartbeats and the online list on a real Redis."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest
from redis.asyncio import Redis

from core.errors import RegistrationError
from core.keys import Keys
from core.registry import Ownership, Registry
from core.schemas import MachineMetadata

NS = "team"
OTHER_NS = "other"
INSTANCE = "agent-a"
OTHER_INSTANCE = "agent-b"
TTL_MS = 60_000


@pytest.fixture
def registry(redis: Redis, keys: Keys) -> Registry:
    return Registry(redis, keys)


def _meta(hostname: str = "box", *, launcher: str = "pty") -> MachineMetadata:
    return MachineMetadata(hostname=hostname, platform="linux", version="1.2.3", launcher=launcher)


async def _up(
    registry: Registry, machine_id: str, *, ns: str = NS, meta: MachineMetadata | None = None, ttl_ms: int = TTL_MS
) -> bool:
    meta = meta or _meta(machine_id)
    await registry.register(ns, machine_id, meta)
    return await registry.heartbeat(ns, machine_id, INSTANCE, msgspec.json.encode(meta), ttl_ms)


async def _redis_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def _ids(registry: Registry, ns: str = NS) -> list[str]:
    return [m.id for m in await registry.online(ns)]


async def test_register_claims_the_machine_id_for_its_namespace(registry: Registry, redis: Redis, keys: Keys) -> None:
    await registry.register(NS, "box-1", _meta())

    assert await redis.get(keys.owner("box-1")) == NS.encode()
    assert await redis.smembers(keys.machines(NS)) == {b"box-1"}
    assert await redis.exists(keys.info(NS, "box-1")) == 1


async def test_registering_the_same_id_in_another_namespace_fails_naming_both(
    registry: Registry, redis: Redis, keys: Keys
) -> None:
    await registry.register(NS, "box-1", _meta())

    with pytest.raises(RegistrationError) as excinfo:
        await registry.register(OTHER_NS, "box-1", _meta())

    message = str(excinfo.value)
    assert repr(NS) in message
    assert repr(OTHER_NS) in message
    assert await redis.get(keys.owner("box-1")) == NS.encode()
    assert await redis.exists(keys.machines(OTHER_NS)) == 0
    assert await redis.exists(keys.info(OTHER_NS, "box-1")) == 0


async def test_register_is_idempotent(registry: Registry, redis: Redis, keys: Keys) -> None:
    await registry.register(NS, "box-1", _meta())
    await registry.register(NS, "box-1", _meta())

    assert await redis.get(keys.owner("box-1")) == NS.encode()
    assert await redis.smembers(keys.machines(NS)) == {b"box-1"}
    assert await registry.ownership(NS, "box-1") is Ownership.MINE


async def test_heartbeat_reports_a_lost_registration_and_register_heals_it(
    registry: Registry, redis: Redis, keys: Keys
) -> None:
    assert await _up(registry, "box-1")

    await redis.delete(keys.info(NS, "box-1"))
    assert not await registry.heartbeat(NS, "box-1", INSTANCE, msgspec.json.encode(_meta()), TTL_MS)

    await registry.register(NS, "box-1", _meta())
    assert await registry.heartbeat(NS, "box-1", INSTANCE, msgspec.json.encode(_meta()), TTL_MS)


async def test_heartbeat_without_registration_returns_false(registry: Registry) -> None:
    assert not await registry.heartbeat(NS, "box-1", INSTANCE, msgspec.json.encode(_meta()), TTL_MS)
    assert await registry.online(NS) == []


async def test_online_lists_live_machines_sorted_with_redis_last_seen_and_metadata(
    registry: Registry, redis: Redis
) -> None:
    meta_b = _meta("host-b", launcher="tmux")
    await registry.register(NS, "box-c", _meta("host-c"))  # registered, never heartbeats
    before = await _redis_ms(redis)
    assert await _up(registry, "box-b", meta=meta_b)
    assert await _up(registry, "box-a")
    after = await _redis_ms(redis)

    machines = await registry.online(NS)

    assert [m.id for m in machines] == ["box-a", "box-b"]
    assert all(m.namespace == NS for m in machines)
    assert all(before <= m.last_seen <= after for m in machines)
    assert machines[1].metadata == meta_b
    assert machines[0].metadata == _meta("box-a")


async def test_online_uses_the_latest_heartbeat(registry: Registry, redis: Redis) -> None:
    assert await _up(registry, "box-1", meta=_meta("old"))
    first = (await registry.online(NS))[0].last_seen
    give_up_at = time.monotonic() + 5.0
    while await _redis_ms(redis) <= first:
        assert time.monotonic() < give_up_at
        await asyncio.sleep(0.002)

    new = _meta("new")
    assert await registry.heartbeat(NS, "box-1", INSTANCE, msgspec.json.encode(new), TTL_MS)

    machine = (await registry.online(NS))[0]
    assert machine.last_seen > first
    assert machine.metadata == new


async def test_online_skips_a_heartbeat_with_unreadable_metadata(registry: Registry) -> None:
    await registry.register(NS, "box-1", _meta())
    assert await registry.heartbeat(NS, "box-1", INSTANCE, b"not json", TTL_MS)
    assert await _up(registry, "box-2")

    assert await _ids(registry) == ["box-2"]


async def test_a_heartbeat_drops_out_of_online_after_its_ttl(registry: Registry, redis: Redis, keys: Keys) -> None:
    assert await _up(registry, "box-1", ttl_ms=100)
    assert await _up(registry, "box-2")
    assert await _ids(registry) == ["box-1", "box-2"]

    give_up_at = time.monotonic() + 5.0
    while await _ids(registry) != ["box-2"]:
        assert time.monotonic() < give_up_at, "the short heartbeat never expired"
        await asyncio.sleep(0.01)
    assert await redis.exists(keys.heartbeat(NS, "box-1")) == 0


async def test_release_by_the_owning_instance_removes_the_heartbeat(
    registry: Registry, redis: Redis, keys: Keys
) -> None:
    assert await _up(registry, "box-1")

    await registry.release(NS, "box-1", OTHER_INSTANCE)
    assert await _ids(registry) == ["box-1"]

    await registry.release(NS, "box-1", INSTANCE)
    assert await _ids(registry) == []
    assert await redis.exists(keys.heartbeat(NS, "box-1")) == 0
    assert await registry.ownership(NS, "box-1") is Ownership.MINE


async def test_ownership_is_mine_foreign_or_unknown(registry: Registry, redis: Redis, keys: Keys) -> None:
    await registry.register(NS, "box-1", _meta())

    assert await registry.ownership(NS, "box-1") is Ownership.MINE
    assert await registry.ownership("third", "box-1") is Ownership.FOREIGN
    assert await registry.ownership(NS, "box-2") is Ownership.UNKNOWN

    await redis.delete(keys.info(NS, "box-1"))
    assert await registry.ownership(NS, "box-1") is Ownership.MINE, "the owner record alone still decides"


async def test_own_registration_wins_over_an_overwritten_owner_record(
    registry: Registry, redis: Redis, keys: Keys
) -> None:
    await registry.register(NS, "box-1", _meta())
    await redis.set(keys.owner("box-1"), OTHER_NS)

    assert await registry.ownership(NS, "box-1") is Ownership.MINE
    assert await registry.ownership("third", "box-1") is Ownership.FOREIGN


async def test_machines_of_other_namespaces_never_appear(registry: Registry) -> None:
    assert await _up(registry, "box-1")
    assert await _up(registry, "box-2", ns=OTHER_NS)

    assert await _ids(registry, NS) == ["box-1"]
    assert await _ids(registry, OTHER_NS) == ["box-2"]
    assert await registry.online("empty") == []


async def test_online_is_correct_beside_a_large_other_namespace(registry: Registry, redis: Redis, keys: Keys) -> None:
    meta = msgspec.json.encode(_meta("bulk"))
    bulk = [f"bulk-{i:04d}" for i in range(2000)]
    async with redis.pipeline(transaction=False) as pipe:
        for machine_id in bulk:
            pipe.set(keys.owner(machine_id), OTHER_NS)
            pipe.sadd(keys.machines(OTHER_NS), machine_id)
            pipe.hset(keys.info(OTHER_NS, machine_id), "metadata", meta)
            pipe.hset(
                keys.heartbeat(OTHER_NS, machine_id), mapping={"instance": INSTANCE, "seenMs": 1, "metadata": meta}
            )
            pipe.pexpire(keys.heartbeat(OTHER_NS, machine_id), TTL_MS)
        await pipe.execute()
    for machine_id in ("box-2", "box-1", "box-3"):
        assert await _up(registry, machine_id)

    assert await _ids(registry, NS) == ["box-1", "box-2", "box-3"]
    assert await _ids(registry, OTHER_NS) == bulk
