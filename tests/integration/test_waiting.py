"""Spawns waiting for their machine (waitForMachineS) on a real Redis: queued while it is offline,
kept by the offline sweep, claimed under the usual rules once it beats, and settled by the
worker (core.waiting) with exactly one final event, whoever ends them."""

from __future__ import annotations

import uuid

import msgspec
import pytest
from redis.asyncio import Redis

from core import events as event_codec
from core.envelopes import Enqueued
from core.events import JobEvent
from core.keys import Keys, waiting_member
from core.lua import Scripts
from core.queue import JobQueue
from core.schemas import Envelope, JobKind, JobState
from core.settings import Settings
from core.sweeps import Sweeper
from tests import machines

NS = "team"
MACHINE = "box-1"
INSTANCE = "a" * 32
HUB = "0123456789abcdef"
RESULT = b'{"success":true,"sessionId":"s1"}'
FAILED = b'{"success":false,"code":"spawn_failed","error":"exit 1"}'
TIMEOUT_MS = 30_000


@pytest.fixture
def queue(redis: Redis, keys: Keys) -> JobQueue:
    return JobQueue(redis, keys, Scripts(redis, can_load=True))


@pytest.fixture
def sweeper(redis: Redis, keys: Keys, settings: Settings) -> Sweeper:
    fast = msgspec.structs.replace(settings, heartbeat_interval_s=0.05, heartbeat_ttl_s=0.2)
    return Sweeper(redis, keys, fast)


async def wait_spawn(
    queue: JobQueue, *, wait_ms: int = 60_000, kind: JobKind = JobKind.SPAWN, timeout_ms: int = TIMEOUT_MS
) -> Enqueued:
    jid = f"{MACHINE}.{uuid.uuid4().hex}"
    envelope = Envelope(job_id=jid, kind=kind, args=msgspec.Raw(b"{}"), reply_to=HUB, secret="s")
    return await queue.enqueue(
        NS,
        MACHINE,
        envelope,
        record_args=b"{}",
        claim_timeout_ms=5_000,
        timeout_ms=timeout_ms,
        retention_ms=60_000,
        offline_result=b"{}",
        max_queued=100,
        wait_ms=wait_ms,
    )


async def job_events(redis: Redis, keys: Keys, jid: str) -> list[tuple[str, str | None]]:
    found = [event_codec.decode(fields[b"e"]) for _, fields in await redis.xrange(keys.events(NS))]
    return [(e.state, e.code) for e in found if isinstance(e, JobEvent) and e.job_id == jid]


async def due_now(redis: Redis, keys: Keys, jid: str) -> None:
    """As if the worker's next look at the job had come."""
    assert await redis.zadd(keys.waiting_due(), {waiting_member(NS, jid): 0}, xx=True, ch=True) in (0, 1)


async def redis_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def past(redis: Redis, ms: int) -> None:
    """Until the Redis clock is past `ms` (a millisecond or two here)."""
    while await redis_ms(redis) <= ms:
        pass


async def settle(sweeper: Sweeper, redis: Redis) -> int:
    return (await sweeper.waiting.settle(await redis_ms(redis))).ended


async def test_a_spawn_to_an_offline_machine_waits_in_its_mailbox(queue: JobQueue, redis: Redis, keys: Keys) -> None:
    await machines.add(redis, keys, NS, MACHINE, online=False)
    enq = await wait_spawn(queue, wait_ms=60_000)
    assert enq.status == "waiting"
    assert (enq.claim_by_ms, enq.deadline_ms) == (enq.now_ms + 60_000, enq.now_ms + 60_000 + TIMEOUT_MS)
    rec = await queue.record(NS, MACHINE, enq.job_id)
    assert rec is not None and (rec.state, rec.wait_ms, rec.claim_by) == (JobState.QUEUED, 60_000, enq.claim_by_ms)
    assert await redis.llen(keys.mailbox(NS, MACHINE)) == 1
    assert await redis.zscore(keys.waiting_due(), waiting_member(NS, enq.job_id)) == enq.now_ms
    assert await job_events(redis, keys, enq.job_id) == [("waiting", None)]
    # Only spawns wait: a stop to an offline machine still fails at once.
    assert (await wait_spawn(queue, kind=JobKind.STOP)).status == "offline"


async def test_with_a_heartbeat_a_waiting_spawn_is_an_ordinary_one(queue: JobQueue, redis: Redis, keys: Keys) -> None:
    await machines.add(redis, keys, NS, MACHINE)
    enq = await wait_spawn(queue)
    assert enq.status == "queued" and enq.claim_by_ms == enq.now_ms + 5_000
    rec = await queue.record(NS, MACHINE, enq.job_id)
    assert rec is not None and rec.wait_ms is None
    assert await redis.zcard(keys.waiting_due()) == 0


async def test_the_offline_sweep_keeps_a_waiting_spawn(
    sweeper: Sweeper, queue: JobQueue, redis: Redis, keys: Keys
) -> None:
    instance = await machines.add(redis, keys, NS, MACHINE, ttl_ms=60_000)
    await sweeper.check(NS, MACHINE)  # marked online
    await redis.delete(keys.heartbeat(NS, MACHINE))
    enq = await wait_spawn(queue)  # before the sweep saw it go
    assert enq.status == "waiting"
    await sweeper.check(NS, MACHINE)  # marked offline: its mailbox is drained, the waiting job put back
    rec = await queue.record(NS, MACHINE, enq.job_id)
    assert rec is not None and rec.state == JobState.QUEUED
    assert await redis.llen(keys.mailbox(NS, MACHINE)) == 1
    await machines.beat(redis, keys, NS, MACHINE, instance)
    (popped,) = await queue.pop_mailbox(redis, NS, MACHINE, 0.1, 10)
    assert popped.job_id == enq.job_id


async def test_a_claimed_waiting_spawn_runs_under_the_usual_deadline_and_is_announced_once(
    sweeper: Sweeper, queue: JobQueue, redis: Redis, keys: Keys
) -> None:
    await machines.add(redis, keys, NS, MACHINE, online=False)
    enq = await wait_spawn(queue)
    await machines.beat(redis, keys, NS, MACHINE, INSTANCE)
    assert await queue.claim(NS, MACHINE, enq.job_id, INSTANCE) == "claimed"
    rec = await queue.record(NS, MACHINE, enq.job_id)
    assert rec is not None and rec.claimed_ms is not None and rec.deadline_ms == rec.claimed_ms + TIMEOUT_MS
    await due_now(redis, keys, enq.job_id)
    assert await settle(sweeper, redis) == 0  # running: looked at again, nothing to say yet
    assert await redis.zscore(keys.waiting_due(), waiting_member(NS, enq.job_id)) is not None
    assert await queue.complete(NS, MACHINE, enq.job_id, INSTANCE, JobState.FAILED, FAILED) is not None
    await due_now(redis, keys, enq.job_id)
    assert await settle(sweeper, redis) == 1
    assert await settle(sweeper, redis) == 0  # settled: out of the schedule
    assert await job_events(redis, keys, enq.job_id) == [("waiting", None), ("failed", "spawn_failed")]


async def test_a_waiting_spawn_expires_at_the_end_of_its_wait_and_can_no_longer_be_claimed(
    sweeper: Sweeper, queue: JobQueue, redis: Redis, keys: Keys
) -> None:
    await machines.add(redis, keys, NS, MACHINE, online=False)
    enq = await wait_spawn(queue, wait_ms=1)
    await past(redis, enq.claim_by_ms)
    assert await settle(sweeper, redis) == 1
    rec = await queue.record(NS, MACHINE, enq.job_id)
    assert rec is not None and rec.state == JobState.EXPIRED and rec.claimed_ms is None
    await machines.beat(redis, keys, NS, MACHINE, INSTANCE)
    assert await queue.claim(NS, MACHINE, enq.job_id, INSTANCE) == "no"
    await due_now(redis, keys, enq.job_id)
    assert await settle(sweeper, redis) == 0
    assert await job_events(redis, keys, enq.job_id) == [("waiting", None), ("expired", None)]


async def test_an_expiry_by_the_agents_late_claim_is_announced_by_the_worker(
    sweeper: Sweeper, queue: JobQueue, redis: Redis, keys: Keys
) -> None:
    await machines.add(redis, keys, NS, MACHINE, online=False)
    enq = await wait_spawn(queue, wait_ms=1)
    await machines.beat(redis, keys, NS, MACHINE, INSTANCE)
    await past(redis, enq.claim_by_ms)
    assert await queue.claim(NS, MACHINE, enq.job_id, INSTANCE) == "no"
    rec = await queue.record(NS, MACHINE, enq.job_id)
    assert rec is not None and rec.state == JobState.EXPIRED
    assert await settle(sweeper, redis) == 1
    assert await job_events(redis, keys, enq.job_id) == [("waiting", None), ("expired", None)]


async def test_a_claimed_waiting_spawn_without_an_answer_by_its_deadline_turns_unknown_once(
    sweeper: Sweeper, queue: JobQueue, redis: Redis, keys: Keys
) -> None:
    await machines.add(redis, keys, NS, MACHINE, online=False)
    enq = await wait_spawn(queue, timeout_ms=1)
    await machines.beat(redis, keys, NS, MACHINE, INSTANCE)
    assert await queue.claim(NS, MACHINE, enq.job_id, INSTANCE) == "claimed"
    rec = await queue.record(NS, MACHINE, enq.job_id)
    assert rec is not None and rec.deadline_ms is not None
    await past(redis, rec.deadline_ms)
    await due_now(redis, keys, enq.job_id)
    assert await settle(sweeper, redis) == 1
    rec = await queue.record(NS, MACHINE, enq.job_id)
    assert rec is not None and rec.state == JobState.UNKNOWN
    # The agent's late report still lands, as for any job; the outcome was announced once already.
    assert await queue.complete(NS, MACHINE, enq.job_id, INSTANCE, JobState.SUCCEEDED, RESULT) is not None
    await redis.zadd(keys.waiting_due(), {waiting_member(NS, enq.job_id): 0})
    assert await settle(sweeper, redis) == 0
    assert await job_events(redis, keys, enq.job_id) == [("waiting", None), ("unknown", None)]


async def test_a_machine_coming_online_has_its_waiting_spawns_looked_at_at_once(
    sweeper: Sweeper, queue: JobQueue, redis: Redis, keys: Keys
) -> None:
    await machines.add(redis, keys, NS, MACHINE, online=False)
    await sweeper.check(NS, MACHINE)
    enq = await wait_spawn(queue)
    assert await redis.smembers(keys.waiting(NS, MACHINE)) == {enq.job_id.encode()}
    await settle(sweeper, redis)  # offline: the next look is an offline recheck away
    member = waiting_member(NS, enq.job_id)
    assert (await redis.zscore(keys.waiting_due(), member) or 0) > await redis_ms(redis)
    await machines.beat(redis, keys, NS, MACHINE, INSTANCE)
    await sweeper.check(NS, MACHINE)  # marked online: its waiting jobs are due now
    assert (await redis.zscore(keys.waiting_due(), member) or 0) <= await redis_ms(redis)
    assert await queue.claim(NS, MACHINE, enq.job_id, INSTANCE) == "claimed"
    assert await queue.complete(NS, MACHINE, enq.job_id, INSTANCE, JobState.SUCCEEDED, RESULT) is not None
    await due_now(redis, keys, enq.job_id)
    assert await settle(sweeper, redis) == 1
    assert await redis.smembers(keys.waiting(NS, MACHINE)) == set()
    assert await job_events(redis, keys, enq.job_id) == [("waiting", None), ("succeeded", None)]
