"""The job protocol on a real Redis: hubs, agents and the worker speak it only through JobQueue."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
import pytest
from redis.asyncio import Redis

from core.envelopes import Answer, Enqueued
from core.errors import ScriptsNotLoaded
from core.events import JobEvent, decode
from core.keys import Keys
from core.lua import Scripts
from core.queue import JobQueue
from core.schemas import Envelope, JobKind, JobRecord, JobState, Reply
from tests import machines
from tests.waiting import redis_clock_past

NS = "team"
MACHINE = "box-1"
INSTANCE = "a" * 32
OTHER_INSTANCE = "b" * 32
HUB = "0123456789abcdef"
OTHER_HUB = "fedcba9876543210"
OFFLINE_RESULT = b'{"success":false,"code":"machine_offline"}'
ARGS = b'{"directory":"/tmp/x","agent":"claude","prompt":"secret plans"}'
RECORD_ARGS = b'{"directory":"/tmp/x","agent":"claude","promptBytes":12}'
RESULT = b'{"success":true,"sessionId":"s1"}'
CLAIM_MS, TIMEOUT_MS, RETENTION_MS = 10_000, 30_000, 60_000


@pytest.fixture
def queue(redis: Redis, keys: Keys) -> JobQueue:
    return JobQueue(redis, keys, Scripts(redis, can_load=True))


def job_id() -> str:
    return f"{MACHINE}.{uuid.uuid4().hex}"


def envelope(jid: str, *, kind: JobKind = JobKind.SPAWN, idempotency: str = "", reply_to: str = HUB) -> Envelope:
    return Envelope(
        job_id=jid, kind=kind, args=msgspec.Raw(ARGS), reply_to=reply_to, secret=f"s-{jid}", idempotency=idempotency
    )


async def enqueue(
    queue: JobQueue,
    jid: str,
    *,
    claim_ms: int = CLAIM_MS,
    max_queued: int = 10,
    kind: JobKind = JobKind.SPAWN,
    **kw: str,
) -> Enqueued:
    return await queue.enqueue(
        NS,
        MACHINE,
        envelope(jid, kind=kind, idempotency=kw.get("idempotency", "")),
        record_args=RECORD_ARGS,
        claim_timeout_ms=claim_ms,
        timeout_ms=TIMEOUT_MS,
        retention_ms=RETENTION_MS,
        offline_result=OFFLINE_RESULT,
        max_queued=max_queued,
        fingerprint=kw.get("fingerprint", ""),
        idempotency_ttl_ms=RETENTION_MS,
    )


async def record(queue: JobQueue, jid: str) -> JobRecord:
    found = await queue.record(NS, MACHINE, jid)
    assert found is not None, f"no record for {jid}"
    return found


async def online(redis: Redis, keys: Keys, instance: str = INSTANCE) -> None:
    await machines.add(redis, keys, NS, MACHINE, instance=instance)


async def events(redis: Redis, keys: Keys) -> list[JobEvent]:
    entries = await redis.xrange(keys.events(NS))
    return [e for e in (decode(fields[b"e"]) for _, fields in entries) if isinstance(e, JobEvent)]


async def redis_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


# --- enqueue ---------------------------------------------------------------------------------


async def test_enqueue_for_an_unregistered_machine_is_unknown_and_records_nothing(
    queue: JobQueue, redis: Redis, keys: Keys
) -> None:
    jid = job_id()
    assert (await enqueue(queue, jid)).status == "unknown"
    assert await queue.record(NS, MACHINE, jid) is None
    assert not await redis.exists(keys.mailbox(NS, MACHINE), keys.jobs(NS))


async def test_enqueue_without_heartbeat_records_a_failed_job_and_pushes_nothing(
    queue: JobQueue, redis: Redis, keys: Keys
) -> None:
    await machines.add(redis, keys, NS, MACHINE, online=False)
    jid = job_id()
    assert (await enqueue(queue, jid)).status == "offline"
    rec = await record(queue, jid)
    assert (rec.state, rec.result, rec.kind) == (JobState.FAILED, OFFLINE_RESULT.decode(), JobKind.SPAWN)
    assert rec.created_ms == rec.finished_ms
    assert not await redis.exists(keys.mailbox(NS, MACHINE))
    assert await redis.zscore(keys.jobs(NS), jid) == rec.created_ms
    assert [(e.state, e.code) for e in await events(redis, keys)] == [("failed", "machine_offline")]


async def test_enqueue_queues_an_envelope_with_redis_clock_deadlines_and_keeps_no_prompt(
    queue: JobQueue, redis: Redis, keys: Keys
) -> None:
    await online(redis, keys)
    before = await redis_ms(redis)
    jid = job_id()
    enq = await enqueue(queue, jid)
    after = await redis_ms(redis)
    assert enq.status == "queued" and before <= enq.now_ms <= after
    assert (enq.claim_by_ms, enq.deadline_ms) == (enq.now_ms + CLAIM_MS, enq.now_ms + TIMEOUT_MS)
    rec = await record(queue, jid)
    assert (rec.state, rec.reply_to, rec.secret) == (JobState.QUEUED, HUB, f"s-{jid}")
    assert rec.args == RECORD_ARGS.decode() and b"secret plans" not in await redis.get(keys.job(NS, MACHINE, jid))
    assert RETENTION_MS - 1000 < await redis.pttl(keys.job(NS, MACHINE, jid)) <= RETENTION_MS
    (popped,) = await queue.pop_mailbox(redis, NS, MACHINE, 0.1, 10)
    assert popped == envelope(jid) and bytes(popped.args) == ARGS  # the agent gets the prompt
    assert await events(redis, keys) == []  # only ends are published


async def test_a_drained_machine_takes_no_spawn_but_still_stops(queue: JobQueue, redis: Redis, keys: Keys) -> None:
    await online(redis, keys)
    await redis.hset(keys.reg(NS, MACHINE), "drained", "1")
    jid = job_id()
    assert (await enqueue(queue, jid)).status == "draining"
    assert await queue.record(NS, MACHINE, jid) is None and not await redis.exists(keys.mailbox(NS, MACHINE))
    stop = job_id()
    assert (await enqueue(queue, stop, kind=JobKind.STOP)).status == "queued"
    assert (await record(queue, stop)).state == JobState.QUEUED


async def test_a_full_mailbox_refuses_and_leaves_nothing_behind(queue: JobQueue, redis: Redis, keys: Keys) -> None:
    await online(redis, keys)
    first, second = job_id(), job_id()
    assert (await enqueue(queue, first, max_queued=1)).status == "queued"
    assert (await enqueue(queue, second, max_queued=1)).status == "full"
    assert await queue.record(NS, MACHINE, second) is None
    assert [e.job_id for e in await queue.pop_mailbox(redis, NS, MACHINE, 0.1, 10)] == [first]
    read = envelope(job_id(), kind=JobKind.PATHS)
    await enqueue(queue, job_id(), max_queued=1)
    assert await queue.push_read(NS, MACHINE, read, max_queued=1) == "full"
    assert await redis.llen(keys.mailbox(NS, MACHINE)) == 1


async def test_a_used_idempotency_digest_returns_the_first_job(queue: JobQueue, redis: Redis, keys: Keys) -> None:
    await online(redis, keys)
    first, second = job_id(), job_id()
    assert (await enqueue(queue, first, idempotency="d1", fingerprint="f1")).status == "queued"
    again = await enqueue(queue, second, idempotency="d1", fingerprint="f2")
    assert (again.status, again.job_id, again.fingerprint) == ("duplicate", first, "f1")
    assert await queue.record(NS, MACHINE, second) is None
    assert await redis.llen(keys.mailbox(NS, MACHINE)) == 1


async def test_read_only_jobs_are_pushed_only_to_a_machine_with_a_heartbeat(
    queue: JobQueue, redis: Redis, keys: Keys
) -> None:
    read = envelope(job_id(), kind=JobKind.PATHS)
    assert await queue.push_read(NS, MACHINE, read, max_queued=10) == "offline"
    await machines.add(redis, keys, NS, MACHINE, online=False)
    assert await queue.push_read(NS, MACHINE, read, max_queued=10) == "offline"
    await online(redis, keys)
    assert await queue.push_read(NS, MACHINE, read, max_queued=10) == "queued"
    assert await queue.record(NS, MACHINE, read.job_id) is None  # answered, never recorded
    assert await queue.pop_mailbox(redis, NS, MACHINE, 0.1, 10) == [read]


# --- the mailbox ------------------------------------------------------------------------------


async def test_pop_mailbox_is_oldest_first_respects_count_and_drops_junk(
    queue: JobQueue, redis: Redis, keys: Keys, blocking: Redis
) -> None:
    await online(redis, keys)
    ids = [job_id() for _ in range(3)]
    for jid in ids[:2]:
        await enqueue(queue, jid)
    await redis.lpush(keys.mailbox(NS, MACHINE), b"not an envelope")
    await enqueue(queue, ids[2])
    assert [e.job_id for e in await queue.pop_mailbox(blocking, NS, MACHINE, 0.1, 1)] == ids[:1]
    assert [e.job_id for e in await queue.pop_mailbox(blocking, NS, MACHINE, 0.1, 10)] == ids[1:]
    assert await queue.pop_mailbox(blocking, NS, MACHINE, 0.2, 10) == []  # a quiet mailbox is no error


# --- claim and abandon --------------------------------------------------------------------------


async def test_claim_before_the_deadline_runs_the_job_once(queue: JobQueue, redis: Redis, keys: Keys) -> None:
    await online(redis, keys)
    jid = job_id()
    await enqueue(queue, jid)
    assert await queue.claim(NS, MACHINE, jid, INSTANCE) == "claimed"
    rec = await record(queue, jid)
    assert (rec.state, rec.claimed_by) == (JobState.RUNNING, INSTANCE) and rec.claimed_ms is not None
    assert await queue.claim(NS, MACHINE, jid, OTHER_INSTANCE) == "no"
    assert await queue.claim(NS, MACHINE, job_id(), INSTANCE) == "no"  # missing


async def test_claim_after_the_claim_deadline_expires_the_job(queue: JobQueue, redis: Redis, keys: Keys) -> None:
    await online(redis, keys)
    jid = job_id()
    await enqueue(queue, jid, claim_ms=1)
    await redis_clock_past(redis, (await record(queue, jid)).claim_by or 0)
    assert await queue.claim(NS, MACHINE, jid, INSTANCE) == "no"
    assert (await record(queue, jid)).state == JobState.EXPIRED


async def test_abandon_expires_a_queued_job_once_and_publishes_once(queue: JobQueue, redis: Redis, keys: Keys) -> None:
    await online(redis, keys)
    jid = job_id()
    await enqueue(queue, jid)
    first = await queue.abandon(NS, MACHINE, jid, JobKind.SPAWN, give_up=False)
    second = await queue.abandon(NS, MACHINE, jid, JobKind.SPAWN, give_up=True)
    assert (first.state, first.changed) == ("expired", True)
    assert (second.state, second.changed) == ("expired", False)
    assert [(e.job_id, e.state) for e in await events(redis, keys)] == [(jid, "expired")]
    assert await queue.claim(NS, MACHINE, jid, INSTANCE) == "no"
    assert (await queue.abandon(NS, MACHINE, job_id(), JobKind.SPAWN, give_up=True)).state == "missing"


async def test_claim_and_abandon_race_has_exactly_one_winner(queue: JobQueue, redis: Redis, keys: Keys) -> None:
    await online(redis, keys)
    for _ in range(20):
        jid = job_id()
        assert (await enqueue(queue, jid, max_queued=100)).status == "queued"
        claimed, abandoned = await asyncio.gather(
            queue.claim(NS, MACHINE, jid, INSTANCE), queue.abandon(NS, MACHINE, jid, JobKind.SPAWN, give_up=False)
        )
        state = (await record(queue, jid)).state
        assert (claimed == "claimed") != abandoned.changed
        assert state == (JobState.RUNNING if claimed == "claimed" else JobState.EXPIRED)


async def test_give_up_marks_a_running_job_unknown_and_its_claimer_can_still_complete(
    queue: JobQueue, redis: Redis, keys: Keys
) -> None:
    await online(redis, keys)
    jid = job_id()
    await enqueue(queue, jid)
    await queue.claim(NS, MACHINE, jid, INSTANCE)
    assert (await queue.abandon(NS, MACHINE, jid, JobKind.SPAWN, give_up=False)).state == "running"
    assert (await queue.abandon(NS, MACHINE, jid, JobKind.SPAWN, give_up=True)).changed
    answer = await queue.complete(NS, MACHINE, jid, INSTANCE, JobState.SUCCEEDED, RESULT)
    assert answer == Answer(origin=HUB, joined=(), secret=f"s-{jid}")
    rec = await record(queue, jid)
    assert (rec.state, rec.result) == (JobState.SUCCEEDED, RESULT.decode())


# --- complete, recover, replies ------------------------------------------------------------------


async def test_a_job_ends_at_its_claim_plus_the_time_its_claimer_held_it(
    queue: JobQueue, redis: Redis, keys: Keys
) -> None:
    await online(redis, keys)
    held, negative, garbage = job_id(), job_id(), job_id()
    for jid in (held, negative, garbage):
        await enqueue(queue, jid)
        await queue.claim(NS, MACHINE, jid, INSTANCE)
    assert await queue.complete(NS, MACHINE, held, INSTANCE, JobState.SUCCEEDED, RESULT, held_ms=4321)
    assert await queue.complete(NS, MACHINE, held, INSTANCE, JobState.SUCCEEDED, RESULT, held_ms=9999)  # a repeat
    assert await queue.complete(NS, MACHINE, negative, INSTANCE, JobState.SUCCEEDED, RESULT, held_ms=-50)
    await queue.scripts.run("COMPLETE", [keys.job(NS, MACHINE, garbage)], [INSTANCE, "succeeded", RESULT, "soon"])
    rec = await record(queue, held)
    assert rec.claimed_ms is not None and rec.finished_ms == rec.claimed_ms + 4321
    for jid in (negative, garbage):
        rec = await record(queue, jid)
        assert rec.state == JobState.SUCCEEDED and rec.finished_ms == rec.claimed_ms


async def test_complete_is_fenced_by_the_claiming_instance(queue: JobQueue, redis: Redis, keys: Keys) -> None:
    await online(redis, keys)
    jid, unclaimed = job_id(), job_id()
    await enqueue(queue, jid)
    await enqueue(queue, unclaimed)
    await queue.claim(NS, MACHINE, jid, INSTANCE)
    assert await queue.complete(NS, MACHINE, jid, OTHER_INSTANCE, JobState.SUCCEEDED, RESULT) is None
    assert await queue.complete(NS, MACHINE, unclaimed, INSTANCE, JobState.SUCCEEDED, RESULT) is None
    assert await queue.complete(NS, MACHINE, jid, INSTANCE, JobState.FAILED, b'{"success":false}') is not None
    assert await queue.complete(NS, MACHINE, jid, INSTANCE, JobState.SUCCEEDED, RESULT) is None  # final
    assert (await record(queue, jid)).state == JobState.FAILED


async def test_replies_go_to_the_asking_hub_and_every_joined_hub_with_the_secret(
    queue: JobQueue, redis: Redis, keys: Keys, blocking: Redis
) -> None:
    await online(redis, keys)
    jid = job_id()
    await enqueue(queue, jid)
    joined = await queue.attach(NS, MACHINE, jid, OTHER_HUB)
    assert (joined.state, joined.secret) == ("queued", f"s-{jid}")
    await queue.attach(NS, MACHINE, jid, OTHER_HUB)  # joining twice answers once
    await queue.claim(NS, MACHINE, jid, INSTANCE)
    answer = await queue.complete(NS, MACHINE, jid, INSTANCE, JobState.SUCCEEDED, RESULT)
    assert answer is not None and answer.joined == (OTHER_HUB,)
    await queue.reply(MACHINE, jid, JobState.SUCCEEDED, RESULT, answer)
    (mine,) = await queue.pop_inbox(blocking, HUB, 0.1, 10)
    (theirs,) = await queue.pop_inbox(blocking, OTHER_HUB, 0.1, 10)
    assert mine == Reply(
        job_id=jid,
        machine_id=MACHINE,
        state=JobState.SUCCEEDED,
        result=msgspec.Raw(RESULT),
        secret=f"s-{jid}",
        origin=True,
    )
    assert (theirs.origin, theirs.secret) == (False, f"s-{jid}")
    done = await queue.attach(NS, MACHINE, jid, OTHER_HUB)  # after the end: the outcome, no waiter
    assert (done.state, done.result) == ("succeeded", RESULT)


async def test_a_reply_never_names_a_key_that_is_not_a_hub_inbox(queue: JobQueue, redis: Redis, keys: Keys) -> None:
    hostile = Answer(origin=keys.machines(NS), joined=(keys.tokens(NS), "0" * 16), secret="x")
    await queue.reply(MACHINE, job_id(), JobState.SUCCEEDED, RESULT, hostile)
    assert not await redis.exists(keys.machines(NS), keys.tokens(NS))
    assert await redis.llen(keys.inbox("0" * 16)) == 1


async def test_recover_waits_until_the_old_instance_lost_the_heartbeat(
    queue: JobQueue, redis: Redis, keys: Keys
) -> None:
    await online(redis, keys)
    jid = job_id()
    await enqueue(queue, jid)
    await queue.claim(NS, MACHINE, jid, INSTANCE)
    recover = queue.recover(NS, MACHINE, jid, INSTANCE, OTHER_INSTANCE, JobState.SUCCEEDED, RESULT)
    assert await recover is None  # the old instance still beats
    assert await queue.recover(NS, MACHINE, jid, "c" * 32, OTHER_INSTANCE, JobState.SUCCEEDED, RESULT) is None
    await machines.beat(redis, keys, NS, MACHINE, OTHER_INSTANCE)
    answer = await queue.recover(NS, MACHINE, jid, INSTANCE, OTHER_INSTANCE, JobState.SUCCEEDED, RESULT)
    assert answer is not None and answer.origin == HUB
    rec = await record(queue, jid)
    assert (rec.state, rec.recovered_by) == (JobState.SUCCEEDED, OTHER_INSTANCE)


# --- scripts and records ---------------------------------------------------------------------


async def test_after_a_script_flush_a_trusted_client_reloads_and_a_machine_waits(
    queue: JobQueue, redis: Redis, keys: Keys
) -> None:
    await online(redis, keys)
    await redis.script_flush()
    agent = JobQueue(redis, keys, Scripts(redis, can_load=False))
    with pytest.raises(ScriptsNotLoaded):
        await agent.claim(NS, MACHINE, job_id(), INSTANCE)
    assert (await enqueue(queue, job_id())).status == "queued"  # the hub loads every script
    assert await agent.claim(NS, MACHINE, job_id(), INSTANCE) == "no"  # ran: the job is just missing


async def test_an_unreadable_record_reads_as_none(queue: JobQueue, redis: Redis, keys: Keys) -> None:
    jid = job_id()
    await redis.set(keys.job(NS, MACHINE, jid), b"{not json")
    assert await queue.record(NS, MACHINE, jid) is None
