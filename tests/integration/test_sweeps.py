"""The worker's sweeps on a real Redis: each transition happens once, however often they run, and a
pass looks only at the machines that are due."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from arq.worker import Worker
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError, RedisError

from core import events as event_codec
from core.connections import request_client
from core.errors import SettingsError
from core.events import JobEvent, MachineEvent
from core.keys import Keys, due_member
from core.lua import Scripts
from core.notifications import NOTIFY_FLAGS, follow_heartbeats
from core.queue import JobQueue
from core.schemas import Envelope, JobKind, JobState, Reply
from core.settings import Settings
from core.sweeps import Sweeper
from machine_hub.redis_server import RedisServer, free_port
from tests import machines
from tests.waiting import redis_clock_past, redis_ms, until
from worker import main as worker_main
from worker.settings import health_check_key, health_check_keys, queue_name, redis_pool, schedule, worker_settings

NS = "team"
MACHINE = "box-1"
INSTANCE = "a" * 32
OTHER_INSTANCE = "b" * 32
HUB = "0123456789abcdef"
OTHER_HUB = "fedcba9876543210"


@pytest.fixture
def sweeper(redis: Redis, keys: Keys, settings: Settings) -> Sweeper:
    return Sweeper(redis, keys, msgspec.structs.replace(settings, heartbeat_interval_s=0.05, heartbeat_ttl_s=0.2))


@pytest.fixture
def queue(redis: Redis, keys: Keys) -> JobQueue:
    return JobQueue(redis, keys, Scripts(redis, can_load=True))


async def events(redis: Redis, keys: Keys) -> list[event_codec.Event]:
    return [event_codec.decode(fields[b"e"]) for _id, fields in await redis.xrange(keys.events(NS))]


async def state(redis: Redis, keys: Keys, machine_id: str = MACHINE) -> str | None:
    value = await redis.hget(keys.reg(NS, machine_id), "state")
    return value.decode() if value is not None else None


async def make_due(redis: Redis, keys: Keys, machine_id: str = MACHINE) -> None:
    """As if the time the sweep planned to look at this machine had come."""
    for schedule_ in ("online", "offline"):
        if await redis.zscore(keys.sweep_due(schedule_), due_member(NS, machine_id)) is not None:
            await redis.zadd(keys.sweep_due(schedule_), {due_member(NS, machine_id): 0})


async def spawn_job(queue: JobQueue, *, hub: str = HUB) -> str:
    jid = f"{MACHINE}.{uuid.uuid4().hex}"
    envelope = Envelope(job_id=jid, kind=JobKind.SPAWN, args=msgspec.Raw(b"{}"), reply_to=hub, secret="s")
    enq = await queue.enqueue(
        NS,
        MACHINE,
        envelope,
        record_args=b"{}",
        claim_timeout_ms=30_000,
        timeout_ms=40_000,
        retention_ms=60_000,
        offline_result=b"{}",
        max_queued=100,
    )
    assert enq.status == "queued"
    return jid


# --- machines ----------------------------------------------------------------------------------


async def test_a_machine_goes_online_and_offline_once_however_often_the_sweep_runs(
    sweeper: Sweeper, redis: Redis, keys: Keys
) -> None:
    await machines.add(redis, keys, NS, MACHINE, ttl_ms=60_000)
    first, second = await sweeper.sweep(), await sweeper.sweep()
    assert (first.online, second.online) == (1, 0)
    assert await state(redis, keys) == "online"
    await redis.delete(keys.heartbeat(NS, MACHINE))
    await make_due(redis, keys)
    first, second = await sweeper.sweep(), await sweeper.sweep()
    assert (first.offline, second.offline) == (1, 0)
    assert await state(redis, keys) == "offline"
    assert [e for e in await events(redis, keys) if isinstance(e, MachineEvent)] == [
        MachineEvent(machine_id=MACHINE, state="online"),
        MachineEvent(machine_id=MACHINE, state="offline"),
    ]


async def test_a_pass_looks_only_at_machines_that_are_due(sweeper: Sweeper, redis: Redis, keys: Keys) -> None:
    for i in range(50):
        await machines.add(redis, keys, NS, f"m{i}", ttl_ms=60_000)
    assert (await sweeper.sweep()).checked == 50  # new machines are due at once
    assert (await sweeper.sweep()).checked == 0  # then each when its heartbeat would expire
    await redis.delete(keys.heartbeat(NS, "m7"))
    await make_due(redis, keys, "m7")
    result = await sweeper.sweep()
    assert (result.checked, result.offline) == (1, 1)


async def test_a_machine_found_at_its_expiry_is_looked_at_again_at_the_next_one(
    sweeper: Sweeper, redis: Redis, keys: Keys
) -> None:
    await machines.add(redis, keys, NS, MACHINE, ttl_ms=300, instance=INSTANCE)
    await sweeper.sweep()
    for _ in range(3):  # it keeps beating: each look finds it alive and plans the next
        await machines.beat(redis, keys, NS, MACHINE, INSTANCE, ttl_ms=300)
        due = await redis.zscore(keys.sweep_due("online"), due_member(NS, MACHINE))
        assert due is not None
        await redis_clock_past(redis, int(due))
        await machines.beat(redis, keys, NS, MACHINE, INSTANCE, ttl_ms=300)
        assert (await sweeper.sweep()).offline == 0

    async def expired() -> bool:  # it stops beating
        return not await redis.exists(keys.heartbeat(NS, MACHINE))

    await until(expired, "the heartbeat's TTL ran out")
    due = await redis.zscore(keys.sweep_due("online"), due_member(NS, MACHINE))
    await redis_clock_past(redis, int(due or 0))
    assert (await sweeper.sweep()).offline == 1


async def test_passes_never_overlap(sweeper: Sweeper, redis: Redis, keys: Keys) -> None:
    for i in range(200):
        await machines.add(redis, keys, NS, f"m{i}")
    others = [Sweeper(redis, keys, sweeper.settings) for _ in range(3)]  # as if in other workers
    results = await asyncio.gather(sweeper.sweep(), sweeper.sweep(), *(other.sweep() for other in others))
    assert sum(not r.locked for r in results) >= 1
    assert sum(r.checked for r in results) == 200  # every machine looked at exactly once
    assert not await redis.exists(keys.sweep_lock())


async def test_after_redis_failed_no_machine_is_marked_offline_for_one_heartbeat_ttl(
    tmp_path: Path, keys: Keys
) -> None:
    server = RedisServer(tmp_path).start()  # its own, to hang it
    fast = Settings(redis_url=server.url, key_prefix=keys.prefix, heartbeat_interval_s=0.1, heartbeat_ttl_s=1.5)
    fast = msgspec.structs.replace(fast, redis_socket_timeout_s=0.3)
    redis = request_client(fast)
    try:
        sweeper = Sweeper(redis, keys, fast)
        await machines.add(redis, keys, NS, MACHINE, ttl_ms=60_000)
        assert (await sweeper.sweep()).online == 1
        server.pause()
        try:
            with pytest.raises(RedisError):
                await sweeper.sweep()
        finally:
            server.resume()
        back = time.monotonic()
        await redis.delete(keys.heartbeat(NS, MACHINE))  # its last beat was lost with the outage
        await make_due(redis, keys)
        assert (await sweeper.sweep()).offline == 0  # the lock its lost attempt took is its own
        assert await state(redis, keys) == "online"

        async def swept_offline() -> bool:
            await make_due(redis, keys)
            return (await sweeper.sweep()).offline == 1

        await _until(swept_offline, "the offline mark after the grace")
        assert time.monotonic() - back >= fast.heartbeat_ttl_s
        assert await state(redis, keys) == "offline"
    finally:
        await redis.aclose()
        server.kill()


async def test_a_pass_that_loses_redis_after_taking_the_lock_holds_back_offline_marks(
    sweeper: Sweeper, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As when a Cluster node fails: the lock's node answers, the node of some heartbeats does not."""

    async def lost(result: object) -> int:
        raise RedisConnectionError("Connection closed by server.")

    monkeypatch.setattr(sweeper, "_pass", lost)
    with pytest.raises(RedisConnectionError):
        await sweeper.sweep()
    assert sweeper.grace.remaining_s() == sweeper.grace.ttl_s


async def test_a_machine_never_seen_online_is_never_marked_offline(sweeper: Sweeper, redis: Redis, keys: Keys) -> None:
    await machines.add(redis, keys, NS, MACHINE, online=False)  # added; its agent not started yet
    assert (await sweeper.sweep()).offline == 0
    assert await state(redis, keys) is None and await events(redis, keys) == []
    await machines.beat(redis, keys, NS, MACHINE, INSTANCE)
    await make_due(redis, keys)
    assert (await sweeper.sweep()).online == 1
    assert [e for e in await events(redis, keys)] == [MachineEvent(machine_id=MACHINE, state="online")]


async def test_a_removed_machine_is_forgotten(sweeper: Sweeper, redis: Redis, keys: Keys) -> None:
    await machines.add(redis, keys, NS, MACHINE, online=False)
    await redis.delete(keys.reg(NS, MACHINE))
    await sweeper.sweep()
    assert await redis.zcard(keys.sweep_due("offline")) == 0 and await redis.zcard(keys.sweep_due("online")) == 0


async def test_a_machine_that_beats_without_registration_is_registered_again(
    sweeper: Sweeper, redis: Redis, keys: Keys
) -> None:
    await machines.add(redis, keys, NS, MACHINE)
    await redis.delete(keys.reg(NS, MACHINE), keys.machines(NS), keys.owner(MACHINE))  # Redis lost them
    await sweeper.check(NS, MACHINE)
    assert await state(redis, keys) == "online"
    assert await redis.zrange(keys.machines(NS), 0, -1) == [MACHINE.encode()]
    # But not into a namespace that does not own the id.
    await machines.add(redis, keys, "other", "theirs")
    await redis.set(keys.heartbeat(NS, "theirs"), b"x" * 40, px=60_000)
    await sweeper.check(NS, "theirs")
    assert not await redis.exists(keys.reg(NS, "theirs"))


# --- jobs a machine left ------------------------------------------------------------------------


async def test_jobs_of_an_offline_machine_fail_once_with_a_reply_to_every_waiting_hub(
    sweeper: Sweeper, queue: JobQueue, redis: Redis, keys: Keys, blocking: Redis
) -> None:
    await machines.add(redis, keys, NS, MACHINE)
    queued = await spawn_job(queue)
    await queue.attach(NS, MACHINE, queued, OTHER_HUB)
    taken = await spawn_job(queue)
    await queue.pop_mailbox(redis, NS, MACHINE, 0.1, 1)  # a paused agent holds one envelope
    read = Envelope(job_id=f"{MACHINE}.{uuid.uuid4().hex}", kind=JobKind.PATHS, args=msgspec.Raw(b"{}"), reply_to=HUB)
    assert await queue.push_read(NS, MACHINE, read, max_queued=10) == "queued"
    await redis.delete(keys.heartbeat(NS, MACHINE))
    await sweeper.check(NS, MACHINE)
    await sweeper.check(NS, MACHINE)
    for jid in (queued, taken):
        rec = await queue.record(NS, MACHINE, jid)
        assert rec is not None and rec.state == JobState.FAILED and "went offline" in rec.result
    mine = {r.job_id: r for r in await queue.pop_inbox(blocking, HUB, 0.1, 10)}
    assert set(mine) == {queued, taken, read.job_id}
    assert all(r.state == JobState.FAILED and r.origin for r in mine.values())
    joined: list[Reply] = await queue.pop_inbox(blocking, OTHER_HUB, 0.1, 10)
    assert [(r.job_id, r.origin) for r in joined] == [(queued, False)]
    failed = [e for e in await events(redis, keys) if isinstance(e, JobEvent)]
    assert sorted((e.job_id, e.state, e.code) for e in failed) == sorted(
        [(queued, "failed", "machine_offline"), (taken, "failed", "machine_offline")]
    )


async def test_queued_jobs_stay_while_the_machine_beats(
    sweeper: Sweeper, queue: JobQueue, redis: Redis, keys: Keys
) -> None:
    await machines.add(redis, keys, NS, MACHINE)
    jid = await spawn_job(queue)
    await sweeper.transitions.went_offline(NS, MACHINE, last_seen_ms=None)  # a stale look: it beats again
    rec = await queue.record(NS, MACHINE, jid)
    assert rec is not None and rec.state == JobState.QUEUED
    assert [e.job_id for e in await queue.pop_mailbox(redis, NS, MACHINE, 0.1, 10)] == [jid]


async def test_a_running_job_of_a_gone_instance_turns_unknown_once_and_can_still_be_recovered(
    sweeper: Sweeper, queue: JobQueue, redis: Redis, keys: Keys
) -> None:
    await machines.add(redis, keys, NS, MACHINE, instance=INSTANCE)
    mine, theirs = await spawn_job(queue), await spawn_job(queue)
    await queue.claim(NS, MACHINE, mine, INSTANCE)
    await sweeper.check(NS, MACHINE)  # online, live instance: nothing changes
    assert (await queue.record(NS, MACHINE, mine)).state == JobState.RUNNING  # type: ignore[union-attr]
    await queue.claim(NS, MACHINE, theirs, INSTANCE)
    await redis.delete(keys.heartbeat(NS, MACHINE))
    await sweeper.check(NS, MACHINE)
    await sweeper.check(NS, MACHINE)
    for jid in (mine, theirs):
        assert (await queue.record(NS, MACHINE, jid)).state == JobState.UNKNOWN  # type: ignore[union-attr]
    unknown = [e for e in await events(redis, keys) if isinstance(e, JobEvent) and e.state == "unknown"]
    assert sorted(e.job_id for e in unknown) == sorted([mine, theirs])
    await machines.beat(redis, keys, NS, MACHINE, OTHER_INSTANCE)
    answer = await queue.recover(NS, MACHINE, mine, INSTANCE, OTHER_INSTANCE, JobState.SUCCEEDED, b"{}")
    assert answer is not None


async def test_trim_drops_only_what_is_older_than_the_retention(
    sweeper: Sweeper, redis: Redis, keys: Keys, settings: Settings
) -> None:
    await machines.add(redis, keys, NS, MACHINE)
    now_ms = await redis_ms(redis)
    await redis.zadd(keys.jobs(NS), {"old": now_ms - 120_000, "new": now_ms - 1_000})
    await redis.xadd(keys.events(NS), {"e": b"{}"}, id=f"{now_ms - 120_000}-0")
    await redis.xadd(keys.events(NS), {"e": b"{}"}, id="*")
    short = Sweeper(redis, keys, msgspec.structs.replace(settings, job_retention_s=60.0))
    assert await short.trim() == (1, 1)
    assert await short.trim() == (0, 0)
    assert await redis.zrange(keys.jobs(NS), 0, -1) == [b"new"]


# --- notifications -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def listening(sweeper: Sweeper, redis: Redis, settings: Settings) -> AsyncIterator[None]:
    """The worker's heartbeat listener, subscribed, for the body of the `async with`."""
    await redis.config_set("notify-keyspace-events", NOTIFY_FLAGS)
    stop = asyncio.Event()
    listener = asyncio.create_task(follow_heartbeats(settings, sweeper, stop))
    try:
        await _until(lambda: _subscribed(redis), "the worker to subscribe")
        yield
    finally:
        stop.set()
        await asyncio.wait_for(listener, 10)


async def test_a_heartbeat_created_or_deleted_is_seen_at_once(
    sweeper: Sweeper, redis: Redis, keys: Keys, settings: Settings
) -> None:
    await machines.add(redis, keys, NS, MACHINE, online=False)
    async with listening(sweeper, redis, settings):
        await machines.beat(redis, keys, NS, MACHINE, INSTANCE)
        await _until(lambda: _is(redis, keys, "online"), "the online mark")
        await redis.delete(keys.heartbeat(NS, MACHINE))
        await _until(lambda: _is(redis, keys, "offline"), "the offline mark")


async def test_a_heartbeat_refreshed_costs_the_worker_nothing(
    sweeper: Sweeper, redis: Redis, keys: Keys, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every beat's SET ... PX notifies `expire` too: once a machine was looked at, only the
    deletion of its heartbeat makes another look."""
    looked = await _count_checks(sweeper, monkeypatch)
    await machines.add(redis, keys, NS, MACHINE, online=False)
    async with listening(sweeper, redis, settings):
        await machines.beat(redis, keys, NS, MACHINE, INSTANCE)
        await _until(lambda: _is(redis, keys, "online"), "the online mark")
        first = len(looked)
        for _ in range(4):
            await machines.beat(redis, keys, NS, MACHINE, INSTANCE)
        await redis.delete(keys.heartbeat(NS, MACHINE))
        await _until(lambda: _is(redis, keys, "offline"), "the offline mark")
        assert len(looked) == first + 1


async def test_a_registration_lost_while_the_worker_was_away_comes_back_at_the_next_beat(
    sweeper: Sweeper, redis: Redis, keys: Keys, settings: Settings
) -> None:
    """Redis restarted empty: the agent beat again before the worker listened again, so no `new`
    reached it; the first refresh it hears restores the registration."""
    await machines.add(redis, keys, NS, MACHINE, online=False)
    async with listening(sweeper, redis, settings):
        await machines.beat(redis, keys, NS, MACHINE, INSTANCE)
        await _until(lambda: _is(redis, keys, "online"), "the online mark")
        before = await _pubsub_clients(redis)
        await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await redis.delete(keys.reg(NS, MACHINE))  # lost with Redis's data
        await redis.zrem(keys.machines(NS), MACHINE)

        async def again() -> bool:
            return bool(await _pubsub_clients(redis) - before) and await _subscribed(redis)

        await _until(again, "the worker to subscribe again")
        await machines.beat(redis, keys, NS, MACHINE, INSTANCE)
        await _until(lambda: _is(redis, keys, "online"), "the registration restored and marked online")
        assert await redis.zscore(keys.machines(NS), MACHINE) is not None


async def test_machines_are_looked_at_in_batches_each_in_the_order_of_its_notifications(
    sweeper: Sweeper, redis: Redis, keys: Keys, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a Redis restart every machine beats again at once: one slow batch of looks does not
    hold up the others, and a machine's deletion is never looked at before its creation (how
    notifications become batches: tests/unit/test_looks.py)."""
    batches: list[list[str]] = []  # as they started
    ended: list[str] = []
    gate = asyncio.Event()

    async def held(machines: list[tuple[str, str]]) -> None:
        ids = [m for _, m in machines]
        batches.append(ids)
        if "box-0" in ids:
            await gate.wait()  # box-0's first look takes until the test opens the gate
        ended.extend(ids)

    monkeypatch.setattr(sweeper, "check_many", held)
    async with listening(sweeper, redis, settings):
        for i in range(40):
            await machines.beat(redis, keys, NS, f"box-{i}", INSTANCE)
        await redis.delete(keys.heartbeat(NS, "box-0"))
        # Every other machine is looked at while box-0's first look is held; its deletion waits.
        others = {f"box-{i}" for i in range(1, 40)}
        await _until(lambda: _true(others <= set(ended)), "the other machines' looks", timeout_s=10)
        assert [b for b in batches if "box-0" in b] == [["box-0"]]
        gate.set()
        await _until(lambda: _true(ended.count("box-0") == 2), "box-0's second look", timeout_s=10)
        first, second = (i for i, b in enumerate(batches) if "box-0" in b)
        assert first < second


async def _true(value: bool) -> bool:
    return value


async def _pubsub_clients(redis: Redis) -> set[str]:
    listed = await redis.execute_command("CLIENT", "LIST", "TYPE", "pubsub")
    text = listed.decode() if isinstance(listed, bytes) else str(listed)
    return {line.split()[0] for line in text.splitlines() if line}


async def _count_checks(sweeper: Sweeper, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    looked: list[tuple[str, str]] = []
    check_many = sweeper.check_many

    async def counted(machines: list[tuple[str, str]]) -> None:
        looked.extend(machines)
        await check_many(machines)

    monkeypatch.setattr(sweeper, "check_many", counted)
    return looked


async def _subscribed(redis: Redis) -> bool:
    return int(await redis.execute_command("PUBSUB", "NUMPAT")) > 0


async def _is(redis: Redis, keys: Keys, wanted: str) -> bool:
    return await state(redis, keys) == wanted


async def _until(check, what: str, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


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
        # The trim cron may come due in these seconds too, depending on the wall clock: only sweeps count.
        jobs = [j.decode() for j in await redis.zrange(queue_name(fast), 0, -1)]
        queued = [j for j in jobs if j.startswith(f"{fast.key_prefix}:sweep:")]
        assert queued and len(queued) == len(set(queued)) and len(jobs) == len(set(jobs)), jobs
        assert {w.cron_jobs[0].next_run for w in workers} == {workers[0].cron_jobs[0].next_run}
        assert await pools[0].enqueue_job(f"{fast.key_prefix}:sweep", _job_id=queued[0]) is None
    finally:
        for pool in pools:
            await pool.aclose()


async def test_the_worker_sweeps_and_reports_health_until_stopped(settings: Settings, redis: Redis, keys: Keys) -> None:
    fast = msgspec.structs.replace(settings, sweep_interval_s=1.0, worker_health_check_interval_s=1.0)
    await machines.add(redis, keys, NS, MACHINE)
    await redis.hset(keys.reg(NS, MACHINE), "state", "online")
    await redis.delete(keys.heartbeat(NS, MACHINE))  # it was online; its heartbeat is gone
    assert await asyncio.to_thread(worker_main.check, fast) == 1

    stop = asyncio.Event()
    serving = asyncio.create_task(worker_main.serve(fast, stop))
    deadline = time.monotonic() + 10
    while await state(redis, keys) != "offline":
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


async def test_the_health_check_needs_both_workers_of_the_process(settings: Settings, redis: Redis) -> None:
    keys = health_check_keys(settings)
    assert list(keys) == ["sweeps", "webhook deliveries"]
    await redis.set(keys["sweeps"], "alive")  # and the deliveries' Worker is not
    assert await asyncio.to_thread(worker_main.check, settings) == 1
    await redis.set(keys["webhook deliveries"], "alive")
    assert await asyncio.to_thread(worker_main.check, settings) == 0
    await redis.delete(keys["sweeps"])
    assert await asyncio.to_thread(worker_main.check, settings) == 1


async def test_the_health_check_fails_fast_when_redis_is_unreachable(settings: Settings) -> None:
    nowhere = msgspec.structs.replace(
        settings, redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_connect_timeout_s=0.2
    )
    started = time.monotonic()
    assert await asyncio.to_thread(worker_main.check, nowhere) == 1
    assert time.monotonic() - started < 5
