"""The worker's sweeps on a real Redis: each transition happens once, however often they run."""

from __future__ import annotations

import asyncio
import datetime
import time

import msgspec
import pytest
from arq.worker import Worker
from redis.asyncio import Redis

from core import events as event_codec, sweeps
from core.errors import SettingsError
from core.events import JobEvent, MachineEvent
from core.keys import Keys
from core.queue import JobQueue
from core.registry import Registry
from core.schemas import JobKind, JobState, MachineMetadata, Reply
from core.settings import Settings
from machine_hub.redis_server import free_port
from worker import main as worker_main
from worker.settings import health_check_key, queue_name, redis_pool, schedule, worker_settings

NS = "team"
MACHINE = "box-1"
INSTANCE = "agent-a"
OTHER_INSTANCE = "agent-b"
SPAWN_ARGS = b'{"directory":"/tmp/x","agent":"claude"}'
PATHS_ARGS = b'{"paths":["/a"]}'


@pytest.fixture
def queue(redis: Redis, keys: Keys) -> JobQueue:
    return JobQueue(redis, keys)


@pytest.fixture
def registry(redis: Redis, keys: Keys) -> Registry:
    return Registry(redis, keys)


async def _online(registry: Registry, machine_id: str = MACHINE, instance: str = INSTANCE) -> None:
    await registry.register(NS, machine_id, MachineMetadata(hostname=machine_id, platform="linux", version="1"))
    await registry.heartbeat(NS, machine_id, instance, b"{}", 60_000)
    await registry.set_state(NS, machine_id, "online")


async def _events(redis: Redis, keys: Keys) -> list[event_codec.Event]:
    return [event_codec.decode(fields[b"e"]) for _id, fields in await redis.xrange(keys.events(NS))]


async def _enqueue(queue: JobQueue, job_id: str, kind: JobKind, args: bytes, reply_to: str) -> None:
    enq = await queue.enqueue(
        NS,
        MACHINE,
        job_id,
        kind,
        args,
        reply_to=reply_to,
        claim_timeout_ms=30_000,
        timeout_ms=40_000,
        retention_ms=60_000,
        offline_result=b"null",
    )
    assert enq.status == "queued"


async def _replies(redis: Redis, inbox: str) -> list[Reply]:
    return [msgspec.json.decode(x, type=Reply) for x in await redis.lrange(inbox, 0, -1)]


async def _field(redis: Redis, key: str, name: str) -> str | None:
    value = await redis.hget(key, name)
    return value.decode() if value is not None else None


# --- sweep_machines --------------------------------------------------------------------------


async def test_a_machine_without_heartbeat_goes_offline_once(
    redis: Redis, keys: Keys, settings: Settings, registry: Registry
) -> None:
    await _online(registry)
    await redis.delete(keys.heartbeat(NS, MACHINE))  # what the TTL does when the agent dies

    first, second = await asyncio.gather(*(sweeps.sweep_machines(redis, keys, settings) for _ in range(2)))
    third = await sweeps.sweep_machines(redis, keys, settings)

    assert first.offline + second.offline == 1 and third.offline == 0
    assert await _field(redis, keys.info(NS, MACHINE), "state") == "offline"
    assert await _field(redis, keys.info(NS, MACHINE), "stateSinceMs")
    offline = [e for e in await _events(redis, keys) if isinstance(e, MachineEvent) and e.state == "offline"]
    assert offline == [MachineEvent(machine_id=MACHINE, state="offline")]


async def test_a_machine_with_heartbeat_is_marked_online_once_and_a_live_one_is_left_alone(
    redis: Redis, keys: Keys, settings: Settings, registry: Registry
) -> None:
    await _online(registry)
    await _online(registry, "box-2")
    await redis.hset(keys.info(NS, MACHINE), "state", "offline")  # e.g. a sweep raced a restart
    before = len(await _events(redis, keys))

    results = await asyncio.gather(*(sweeps.sweep_machines(redis, keys, settings) for _ in range(3)))

    assert sum(r.online for r in results) == 1 and sum(r.offline for r in results) == 0
    assert await _field(redis, keys.info(NS, MACHINE), "state") == "online"
    assert await _field(redis, keys.info(NS, "box-2"), "state") == "online"
    assert (await _events(redis, keys))[before:] == [MachineEvent(machine_id=MACHINE, state="online")]


async def test_sweeps_find_every_namespace_of_their_prefix_only(
    redis: Redis, keys: Keys, settings: Settings, registry: Registry
) -> None:
    await _online(registry)
    await registry.register("other", "box-9", MachineMetadata(hostname="b", platform="linux", version="1"))
    foreign = Registry(redis, Keys(keys.prefix + "x"))
    await foreign.register("third", "box-8", MachineMetadata(hostname="b", platform="linux", version="1"))

    assert await sweeps.namespaces(redis, keys) == ["other", NS]


async def test_queued_jobs_of_an_offline_machine_fail_once_with_a_reply_to_every_waiter(
    redis: Redis, keys: Keys, settings: Settings, registry: Registry, queue: JobQueue, blocking: Redis
) -> None:
    await _online(registry)
    hub, other_hub = keys.inbox(NS, "hub-1"), keys.inbox(NS, "hub-2")
    await _enqueue(queue, "spawn-1", JobKind.SPAWN, SPAWN_ARGS, hub)
    await _enqueue(queue, "paths-1", JobKind.PATHS, PATHS_ARGS, hub)
    await _enqueue(queue, "spawn-2", JobKind.SPAWN, SPAWN_ARGS, hub)
    await queue.attach(NS, MACHINE, "spawn-1", other_hub, 60_000)  # a second caller, same Idempotency-Key
    # A paused agent is inside its blocking pop: Redis already handed it the oldest envelope.
    [held] = await queue.pop_mailbox(blocking, NS, MACHINE, 0.1, 1)
    assert held.job_id == "spawn-1"
    await redis.delete(keys.heartbeat(NS, MACHINE))

    results = await asyncio.gather(*(sweeps.sweep_machines(redis, keys, settings) for _ in range(2)))
    again = await sweeps.sweep_machines(redis, keys, settings)

    assert sum(r.failed for r in results) == 3 and again.failed == 0
    assert await redis.exists(keys.mailbox(NS, MACHINE)) == 0
    spawn_result = {"success": False, "error": f"Machine {MACHINE} went offline", "code": "machine_offline"}
    paths_result = {"error": f"Machine {MACHINE} went offline", "code": "machine_offline"}
    for job_id, expected in (("spawn-1", spawn_result), ("spawn-2", spawn_result), ("paths-1", paths_result)):
        record = await queue.job(NS, MACHINE, job_id)
        assert record is not None
        assert record["state"] == b"failed"
        assert msgspec.json.decode(record["result"]) == expected
        assert record["finishedMs"]
    assert await redis.hget(keys.stats(NS, MACHINE), "failed") == b"3"
    replies = sorted((r.job_id, r.state, msgspec.json.decode(r.result)["code"]) for r in await _replies(redis, hub))
    assert replies == [(j, JobState.FAILED, "machine_offline") for j in ("paths-1", "spawn-1", "spawn-2")]
    assert [r.job_id for r in await _replies(redis, other_hub)] == ["spawn-1"]
    failed = [e for e in await _events(redis, keys) if isinstance(e, JobEvent) and e.state == "failed"]
    assert sorted((e.job_id, e.kind, e.code) for e in failed) == [
        ("paths-1", "paths", "machine_offline"),
        ("spawn-1", "spawn", "machine_offline"),
        ("spawn-2", "spawn", "machine_offline"),
    ]
    # The paused agent wakes up: its envelope can no longer be claimed.
    assert not await queue.claim(NS, MACHINE, "spawn-1", INSTANCE)


async def test_queued_jobs_stay_while_the_machine_has_a_heartbeat(
    redis: Redis, keys: Keys, settings: Settings, registry: Registry, queue: JobQueue
) -> None:
    await _online(registry)
    await _enqueue(queue, "spawn-1", JobKind.SPAWN, SPAWN_ARGS, keys.inbox(NS, "hub-1"))

    assert await sweeps.fail_queued_jobs(redis, keys, settings, NS, MACHINE) == 0
    assert (await sweeps.sweep_machines(redis, keys, settings)).failed == 0
    assert await redis.llen(keys.mailbox(NS, MACHINE)) == 1
    assert await _field(redis, keys.job(NS, MACHINE, "spawn-1"), "state") == "queued"


# --- sweep_jobs ------------------------------------------------------------------------------


async def test_a_running_job_of_the_live_instance_is_never_touched(
    redis: Redis, keys: Keys, settings: Settings, registry: Registry, queue: JobQueue
) -> None:
    await _online(registry)
    await _enqueue(queue, "spawn-1", JobKind.SPAWN, SPAWN_ARGS, keys.inbox(NS, "hub-1"))
    assert await queue.claim(NS, MACHINE, "spawn-1", INSTANCE)

    assert await sweeps.sweep_jobs(redis, keys, settings) == 0
    assert await _field(redis, keys.job(NS, MACHINE, "spawn-1"), "state") == "running"
    assert await redis.sismember(keys.running(NS, MACHINE), "spawn-1")


@pytest.mark.parametrize("heartbeat", ["replaced", "gone"])
async def test_a_running_job_of_a_gone_instance_turns_unknown_once_and_can_still_be_recovered(
    redis: Redis, keys: Keys, settings: Settings, registry: Registry, queue: JobQueue, heartbeat: str
) -> None:
    await _online(registry)
    await _enqueue(queue, "spawn-1", JobKind.SPAWN, SPAWN_ARGS, keys.inbox(NS, "hub-1"))
    assert await queue.claim(NS, MACHINE, "spawn-1", INSTANCE)
    if heartbeat == "replaced":  # the agent restarted under a new instance id
        await registry.heartbeat(NS, MACHINE, OTHER_INSTANCE, b"{}", 60_000)
    else:
        await redis.delete(keys.heartbeat(NS, MACHINE))

    counts = await asyncio.gather(*(sweeps.sweep_jobs(redis, keys, settings) for _ in range(3)))

    assert sum(counts) == 1
    assert await _field(redis, keys.job(NS, MACHINE, "spawn-1"), "state") == "unknown"
    assert not await redis.sismember(keys.running(NS, MACHINE), "spawn-1")
    assert await redis.hget(keys.stats(NS, MACHINE), "unknown") == b"1"
    unknown = [e for e in await _events(redis, keys) if isinstance(e, JobEvent) and e.state == "unknown"]
    assert unknown == [JobEvent(job_id="spawn-1", machine_id=MACHINE, kind="spawn", state="unknown")]
    # The restarted agent's recovery settles it from its journal.
    await registry.heartbeat(NS, MACHINE, OTHER_INSTANCE, b"{}", 60_000)
    assert await queue.recover(
        NS, MACHINE, "spawn-1", INSTANCE, OTHER_INSTANCE, JobState.SUCCEEDED, b'{"success":true}', kind=JobKind.SPAWN
    )


async def test_sweep_jobs_drops_running_entries_whose_job_is_gone(
    redis: Redis, keys: Keys, settings: Settings, registry: Registry
) -> None:
    await _online(registry)
    await redis.sadd(keys.running(NS, MACHINE), "expired-job")

    assert await sweeps.sweep_jobs(redis, keys, settings) == 0
    assert await redis.scard(keys.running(NS, MACHINE)) == 0


# --- trim_history ----------------------------------------------------------------------------


async def test_trim_history_drops_only_what_is_older_than_the_retention(
    redis: Redis, keys: Keys, settings: Settings, registry: Registry
) -> None:
    await _online(registry)
    seconds, _ = await redis.time()
    now_ms = int(seconds) * 1000
    await redis.zadd(keys.history(NS, MACHINE), {"old": now_ms - 120_000, "new": now_ms - 1_000})
    await redis.delete(keys.events(NS))  # an old event must come first in a stream
    await redis.xadd(keys.events(NS), {"e": b"{}"}, id=f"{now_ms - 120_000}-0")
    await redis.xadd(keys.events(NS), {"e": b"{}"}, id="*")
    short = msgspec.structs.replace(settings, job_retention_s=60.0)

    first = await sweeps.trim_history(redis, keys, short)
    second = await sweeps.trim_history(redis, keys, short)

    assert (first.jobs, second.jobs) == (1, 0)
    assert first.events >= 1 and second.events == 0
    assert [m.decode() for m in await redis.zrange(keys.history(NS, MACHINE), 0, -1)] == ["new"]
    oldest = (await redis.xrange(keys.events(NS), count=1))[0][0].decode()
    assert int(oldest.split("-")[0]) >= now_ms - 60_000


# --- the arq worker --------------------------------------------------------------------------


def test_sweep_interval_becomes_a_cron_second_set() -> None:
    assert schedule(1) == {"second": set(range(60))}
    assert schedule(5.0) == {"second": {0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55}}
    assert schedule(120) == {"second": 0, "minute": set(range(0, 60, 2))}
    assert schedule(3600) == {"second": 0, "minute": 0, "hour": set(range(24))}
    for bad in (0, 0.5, 1.5, 90, 5400):
        with pytest.raises(SettingsError):
            schedule(bad)


async def test_two_workers_enqueue_each_cron_run_once(settings: Settings, redis: Redis) -> None:
    fast = msgspec.structs.replace(settings, sweep_interval_s=1.0)
    pools = [redis_pool(fast), redis_pool(fast)]
    workers = [Worker(**worker_settings(fast), redis_pool=pool, handle_signals=False) for pool in pools]
    try:
        now = datetime.datetime.now(tz=datetime.UTC)
        for _ in range(3):  # first call only schedules; later ones enqueue the next runs
            for w in workers:
                await w.run_cron(now, 0.5)
            now += datetime.timedelta(seconds=1)
        queued = [j.decode() for j in await redis.zrange(queue_name(fast), 0, -1)]
        assert queued and len(queued) == len(set(queued))
        assert all(j.startswith(f"{fast.key_prefix}:sweep:") for j in queued)
        # Both workers computed the same runs, and only one copy of each was queued.
        assert {w.cron_jobs[0].next_run for w in workers} == {workers[0].cron_jobs[0].next_run}
        # A late worker does not enqueue a run again while its job (or its kept result) exists.
        assert await pools[0].enqueue_job(f"{fast.key_prefix}:sweep", _job_id=queued[0]) is None
    finally:
        for pool in pools:
            await pool.aclose()


async def test_the_worker_sweeps_and_reports_health_until_stopped(
    settings: Settings, redis: Redis, keys: Keys, registry: Registry
) -> None:
    fast = msgspec.structs.replace(settings, sweep_interval_s=1.0, worker_health_check_interval_s=1.0)
    await _online(registry)
    await redis.delete(keys.heartbeat(NS, MACHINE))
    assert await asyncio.to_thread(worker_main.check, fast) == 1

    stop = asyncio.Event()
    serving = asyncio.create_task(worker_main.serve(fast, stop))
    deadline = time.monotonic() + 10
    while await _field(redis, keys.info(NS, MACHINE), "state") != "offline":
        assert time.monotonic() < deadline, "the worker did not sweep"
        assert not serving.done()
        await asyncio.sleep(0.05)
    assert await asyncio.to_thread(worker_main.check, fast) == 0
    # arq's job results are written as JSON, never pickle.
    while not (results := [k async for k in redis.scan_iter(match=f"arq:result:{fast.key_prefix}:sweep:*")]):
        assert time.monotonic() < deadline, "no sweep result was kept"
        await asyncio.sleep(0.05)
    assert msgspec.json.decode(await redis.get(results[0]))["s"] is True

    stop.set()
    await asyncio.wait_for(serving, 15)
    assert not await redis.exists(health_check_key(fast))
    assert await asyncio.to_thread(worker_main.check, fast) == 1


async def test_the_health_check_fails_fast_when_redis_is_unreachable(settings: Settings) -> None:
    nowhere = msgspec.structs.replace(
        settings, redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_connect_timeout_s=0.2
    )
    started = time.monotonic()

    assert await asyncio.to_thread(worker_main.check, nowhere) == 1
    assert time.monotonic() - started < 5
