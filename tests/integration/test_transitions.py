"""Machines coming online in a crowd, on a real Redis: a batch costs a few round trips whatever its
size, registrations Redis lost come back, and each change is recorded (and published) once."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from core import events as event_codec, stats
from core.errors import ScriptsNotLoaded
from core.events import MachineEvent
from core.keys import Keys
from core.lua import Scripts
from core.registry import Registry
from core.settings import Settings
from core.sweeps import Sweeper
from tests import machines

NS = "team"
CROWD = 300
INSTANCE = "a" * 32


@pytest.fixture
def sweeper(redis: Redis, keys: Keys, settings: Settings) -> Sweeper:
    return Sweeper(redis, keys, msgspec.structs.replace(settings, heartbeat_interval_s=0.05, heartbeat_ttl_s=0.2))


def round_trips(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the connections the client takes from its pool: one per command or pipeline sent."""
    count = [0]
    pool = redis.connection_pool
    take = pool.get_connection

    async def counted(*args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return await take(*args, **kwargs)

    monkeypatch.setattr(pool, "get_connection", counted)
    return count


async def online_events(redis: Redis, keys: Keys) -> list[str]:
    found = []
    for _id, fields in await redis.xrange(keys.events(NS)):
        event = event_codec.decode(fields[b"e"])
        if isinstance(event, MachineEvent) and event.state == "online":
            found.append(event.machine_id)
    return found


async def test_a_crowd_whose_registrations_redis_lost_comes_back_in_a_few_round_trips(
    sweeper: Sweeper, redis: Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    crowd = [(NS, f"box-{i}") for i in range(CROWD)]
    for ns, machine_id in crowd:
        await machines.add(redis, keys, ns, machine_id, online=False)
    await redis.delete(keys.machines(NS), keys.stats(), *(keys.reg(ns, m) for ns, m in crowd))  # lost
    foreign = ("other", "box-0")  # an id of NS, beating under another namespace's key
    for ns, machine_id in [*crowd, foreign]:
        await machines.beat(redis, keys, ns, machine_id, INSTANCE)

    await sweeper.scripts.ensure()  # as every sweep pass does first
    trips = round_trips(redis, monkeypatch)
    await sweeper.check_many([*crowd, foreign])
    # TIME and PTTLs; MARK; owners; registrations; counters; MARK again; events; recent jobs;
    # waiting spawns; schedules: the same for 3 machines or 3,000.
    assert trips[0] <= 12, trips[0]

    assert await redis.zcard(keys.machines(NS)) == CROWD
    assert await redis.zcard(keys.machines("other")) == 0  # the id is NS's: not restored there
    assert sorted(await online_events(redis, keys)) == sorted(m for _, m in crowd)
    assert (await stats.read(redis, keys))[NS] == {stats.REGISTERED: CROWD, stats.ONLINE: CROWD}
    assert all(state == b"online" for state in [await redis.hget(keys.reg(ns, m), "state") for ns, m in crowd])

    # Looked at again (a second worker, a repeated notification): nothing changes twice.
    await sweeper.check_many(crowd)
    assert len(await online_events(redis, keys)) == CROWD
    assert (await stats.read(redis, keys))[NS] == {stats.REGISTERED: CROWD, stats.ONLINE: CROWD}


async def test_a_machine_whose_own_keys_are_unreadable_waits_alone(sweeper: Sweeper, redis: Redis, keys: Keys) -> None:
    """A machine's user can give its mailbox the wrong type; the rest of its batch goes on."""
    await machines.add(redis, keys, NS, "good", online=False)
    await machines.add(redis, keys, NS, "bad", online=True)
    await sweeper.check_many([(NS, "bad")])  # online
    await redis.set(keys.mailbox(NS, "bad"), "not a list")
    await redis.delete(keys.heartbeat(NS, "bad"))  # gone: its mailbox is drained, or would be
    await machines.beat(redis, keys, NS, "good", INSTANCE)

    await sweeper.check_many([(NS, "bad"), (NS, "good")])

    assert await redis.hget(keys.reg(NS, "good"), "state") == b"online"
    assert await redis.zscore(keys.sweep_due("offline"), f"{NS}:bad") is not None  # looked at again later


async def test_after_a_script_flush_a_batch_reloads_and_marks_each_machine_once(
    sweeper: Sweeper, redis: Redis, keys: Keys
) -> None:
    """Redis lost its scripts (a restart, a failover): every call of the batch met NOSCRIPT and so
    did not run; each is sent once more after loading, and each change is recorded once."""
    crowd = [(NS, f"flushed-{i}") for i in range(20)]
    for ns, machine_id in crowd:
        await machines.add(redis, keys, ns, machine_id, online=False)
        await machines.beat(redis, keys, ns, machine_id, INSTANCE)
    await redis.script_flush()

    await sweeper.check_many(crowd)

    assert sorted(await online_events(redis, keys)) == sorted(m for _, m in crowd)
    assert (await stats.read(redis, keys))[NS][stats.ONLINE] == len(crowd)


async def test_a_batch_for_a_client_that_may_not_load_scripts_waits(redis: Redis, keys: Keys) -> None:
    registry = Registry(redis, keys, Scripts(redis, can_load=False))
    await machines.add(redis, keys, NS, "box", online=True)
    await redis.script_flush()
    with pytest.raises(ScriptsNotLoaded):
        await registry.mark_many([(NS, "box")], "online")
    assert await redis.hget(keys.reg(NS, "box"), "state") is None  # nothing ran
