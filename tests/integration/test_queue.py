"""The job protocol on a real Redis: hub and agent sides both speak only through JobQueue."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest
from redis.asyncio import Redis

from core.keys import Keys
from core.queue import INBOX_TTL_MS, Enqueued, JobQueue
from core.registry import Registry
from core.schemas import ClaimedJob, JobKind, JobState

NS = "team"
MACHINE = "box-1"
INSTANCE = "agent-a"
OTHER_INSTANCE = "agent-b"
HUB = "hub-1"
OFFLINE_RESULT = b'{"success":false,"code":"offline"}'
ARGS = b'{"directory":"/tmp/x","agent":"claude"}'
CLAIM_TIMEOUT_MS = 10_000
TIMEOUT_MS = 30_000
RETENTION_MS = 60_000


@pytest.fixture
def queue(redis: Redis, keys: Keys) -> JobQueue:
    return JobQueue(redis, keys)


@pytest.fixture
def registry(redis: Redis, keys: Keys) -> Registry:
    return Registry(redis, keys)


@pytest.fixture
def inbox(keys: Keys) -> str:
    return keys.inbox(NS, HUB)


async def _online(registry: Registry, machine_id: str = MACHINE) -> None:
    await registry.heartbeat(NS, machine_id, INSTANCE, b"{}", 60_000)


async def _enqueue(
    queue: JobQueue,
    job_id: str,
    *,
    reply_to: str = "",
    claim_timeout_ms: int = CLAIM_TIMEOUT_MS,
    timeout_ms: int = TIMEOUT_MS,
    idempotency_digest: str = "",
    fingerprint: str = "",
    kind: JobKind = JobKind.SPAWN,
    args: bytes = ARGS,
) -> Enqueued:
    return await queue.enqueue(
        NS,
        MACHINE,
        job_id,
        kind,
        args,
        reply_to=reply_to or queue.keys.inbox(NS, HUB),
        claim_timeout_ms=claim_timeout_ms,
        timeout_ms=timeout_ms,
        retention_ms=RETENTION_MS,
        offline_result=OFFLINE_RESULT,
        idempotency_digest=idempotency_digest,
        fingerprint=fingerprint,
        idempotency_ttl_ms=RETENTION_MS if idempotency_digest else 0,
    )


async def _redis_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def _job(redis: Redis, keys: Keys, job_id: str) -> dict[str, str]:
    raw = await redis.hgetall(keys.job(NS, MACHINE, job_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


async def _mailbox(redis: Redis, keys: Keys) -> list[str]:
    return [x.decode() for x in await redis.lrange(keys.mailbox(NS, MACHINE), 0, -1)]


async def test_enqueue_without_heartbeat_records_a_failed_job_and_pushes_nothing(
    queue: JobQueue, redis: Redis, keys: Keys
) -> None:
    enq = await _enqueue(queue, "job-1")

    assert enq.status == "offline"
    assert enq.job_id == "job-1"
    job = await _job(redis, keys, "job-1")
    assert job["state"] == JobState.FAILED
    assert job["result"] == OFFLINE_RESULT.decode()
    assert job["kind"] == JobKind.SPAWN
    assert job["machineId"] == MACHINE
    assert 0 < await redis.pttl(keys.job(NS, MACHINE, "job-1")) <= RETENTION_MS
    assert await redis.exists(keys.mailbox(NS, MACHINE)) == 0


async def test_enqueue_with_heartbeat_queues_the_id_with_redis_clock_deadlines(
    queue: JobQueue, registry: Registry, redis: Redis, keys: Keys, inbox: str
) -> None:
    await _online(registry)
    before = await _redis_ms(redis)
    enq = await _enqueue(queue, "job-1")
    after = await _redis_ms(redis)

    assert enq.status == "queued"
    assert enq.job_id == "job-1"
    assert before <= enq.now_ms <= after
    assert enq.claim_by_ms == enq.now_ms + CLAIM_TIMEOUT_MS
    assert enq.deadline_ms == enq.now_ms + TIMEOUT_MS
    assert await _mailbox(redis, keys) == ["job-1"]
    job = await _job(redis, keys, "job-1")
    assert job["state"] == JobState.QUEUED
    assert job["args"] == ARGS.decode()
    assert job["replyTo"] == inbox
    assert int(job["claimBy"]) == enq.claim_by_ms
    assert int(job["deadlineMs"]) == enq.deadline_ms


async def test_mailbox_ttl_is_at_least_the_job_timeout(
    queue: JobQueue, registry: Registry, redis: Redis, keys: Keys
) -> None:
    await _online(registry)
    mailbox = keys.mailbox(NS, MACHINE)

    await _enqueue(queue, "job-1", timeout_ms=TIMEOUT_MS)
    enq = await _enqueue(queue, "job-2", timeout_ms=TIMEOUT_MS * 2)
    long_ttl = await redis.pttl(mailbox)
    await _enqueue(queue, "job-3", timeout_ms=1_000)

    assert enq.status == "queued"
    # Between the enqueue and PTTL a few ms of Redis time may pass, never a second.
    assert TIMEOUT_MS * 2 - 1_000 < long_ttl <= TIMEOUT_MS * 2
    assert await redis.pttl(mailbox) > TIMEOUT_MS * 2 - 1_000, "a shorter job must not shorten the mailbox TTL"


async def test_pop_mailbox_returns_ids_oldest_first_and_respects_count(
    queue: JobQueue, registry: Registry, blocking: Redis
) -> None:
    await _online(registry)
    for job_id in ("job-1", "job-2", "job-3"):
        await _enqueue(queue, job_id)

    assert await queue.pop_mailbox(blocking, NS, MACHINE, 0.1, 2) == ["job-1", "job-2"]
    assert await queue.pop_mailbox(blocking, NS, MACHINE, 0.1, 10) == ["job-3"]


async def test_blocking_pop_on_an_empty_mailbox_returns_nothing_after_its_timeout(
    queue: JobQueue, blocking: Redis
) -> None:
    started = time.monotonic()
    assert await queue.pop_mailbox(blocking, NS, MACHINE, 0.1, 10) == []
    elapsed = time.monotonic() - started
    assert 0.05 <= elapsed < 2.0


async def test_claim_before_the_deadline_returns_kind_and_args(
    queue: JobQueue, registry: Registry, redis: Redis, keys: Keys
) -> None:
    await _online(registry)
    await _enqueue(queue, "job-1", kind=JobKind.PATHS, args=b'{"paths":["/a"]}')

    claimed = await queue.claim(NS, MACHINE, "job-1", INSTANCE)

    assert isinstance(claimed, ClaimedJob)
    assert claimed.job_id == "job-1"
    assert claimed.kind is JobKind.PATHS
    assert bytes(claimed.args) == b'{"paths":["/a"]}'
    job = await _job(redis, keys, "job-1")
    assert job["state"] == JobState.RUNNING
    assert job["claimedBy"] == INSTANCE


async def test_second_claim_returns_none(queue: JobQueue, registry: Registry) -> None:
    await _online(registry)
    await _enqueue(queue, "job-1")

    assert await queue.claim(NS, MACHINE, "job-1", INSTANCE) is not None
    assert await queue.claim(NS, MACHINE, "job-1", INSTANCE) is None
    assert await queue.claim(NS, MACHINE, "job-1", OTHER_INSTANCE) is None


async def test_claim_of_a_missing_job_returns_none(queue: JobQueue) -> None:
    assert await queue.claim(NS, MACHINE, "nope", INSTANCE) is None


async def test_claim_after_the_claim_deadline_expires_the_job(
    queue: JobQueue, registry: Registry, redis: Redis, keys: Keys
) -> None:
    await _online(registry)
    enq = await _enqueue(queue, "job-1", claim_timeout_ms=5)
    give_up_at = time.monotonic() + 5.0
    while await _redis_ms(redis) <= enq.claim_by_ms:
        assert time.monotonic() < give_up_at, "Redis TIME never passed the claim deadline"
        await asyncio.sleep(0.002)

    assert await queue.claim(NS, MACHINE, "job-1", INSTANCE) is None
    job = await _job(redis, keys, "job-1")
    assert job["state"] == JobState.EXPIRED
    assert "claimedBy" not in job


async def test_abandon_of_a_queued_job_expires_it_and_a_later_claim_fails(
    queue: JobQueue, registry: Registry, redis: Redis, keys: Keys
) -> None:
    await _online(registry)
    await _enqueue(queue, "job-1")

    status = await queue.abandon(NS, MACHINE, "job-1", give_up=False)

    assert status.state == JobState.EXPIRED
    assert await queue.claim(NS, MACHINE, "job-1", INSTANCE) is None
    assert (await _job(redis, keys, "job-1"))["state"] == JobState.EXPIRED


async def test_abandon_of_a_missing_job_reports_missing(queue: JobQueue) -> None:
    assert (await queue.abandon(NS, MACHINE, "nope", give_up=True)).state == "missing"


async def test_abandon_without_give_up_leaves_a_running_job_running(
    queue: JobQueue, registry: Registry, redis: Redis, keys: Keys
) -> None:
    await _online(registry)
    await _enqueue(queue, "job-1")
    assert await queue.claim(NS, MACHINE, "job-1", INSTANCE) is not None

    status = await queue.abandon(NS, MACHINE, "job-1", give_up=False)

    assert status.state == JobState.RUNNING
    assert (await _job(redis, keys, "job-1"))["state"] == JobState.RUNNING


async def test_claim_and_abandon_race_has_exactly_one_winner(
    queue: JobQueue, registry: Registry, redis: Redis, keys: Keys
) -> None:
    await _online(registry)
    job_ids = [f"job-{i}" for i in range(200)]
    await asyncio.gather(*(_enqueue(queue, job_id) for job_id in job_ids))

    async def race(i: int, job_id: str) -> tuple[bool, bool]:
        claim = queue.claim(NS, MACHINE, job_id, INSTANCE)
        abandon = queue.abandon(NS, MACHINE, job_id, give_up=False)
        if i % 2:
            claimed, status = await asyncio.gather(claim, abandon)
        else:
            status, claimed = await asyncio.gather(abandon, claim)
        return claimed is not None, status.state == JobState.EXPIRED

    outcomes = await asyncio.gather(*(race(i, job_id) for i, job_id in enumerate(job_ids)))

    for job_id, (claim_won, abandon_won) in zip(job_ids, outcomes, strict=True):
        assert claim_won != abandon_won, job_id
        state = (await _job(redis, keys, job_id))["state"]
        assert state == (JobState.RUNNING if claim_won else JobState.EXPIRED), job_id


async def test_give_up_marks_a_running_job_unknown_and_its_claimer_can_still_complete(
    queue: JobQueue, registry: Registry, redis: Redis, keys: Keys
) -> None:
    await _online(registry)
    await _enqueue(queue, "job-1")
    assert await queue.claim(NS, MACHINE, "job-1", INSTANCE) is not None

    status = await queue.abandon(NS, MACHINE, "job-1", give_up=True)
    assert status.state == JobState.UNKNOWN
    assert (await _job(redis, keys, "job-1"))["state"] == JobState.UNKNOWN

    assert await queue.complete(NS, MACHINE, "job-1", INSTANCE, JobState.SUCCEEDED, b'{"success":true}')
    job = await _job(redis, keys, "job-1")
    assert job["state"] == JobState.SUCCEEDED
    assert job["result"] == '{"success":true}'
    assert "finishedMs" in job


async def test_complete_by_another_instance_is_fenced(
    queue: JobQueue, registry: Registry, redis: Redis, keys: Keys, blocking: Redis, inbox: str
) -> None:
    await _online(registry)
    await _enqueue(queue, "job-1")
    assert await queue.claim(NS, MACHINE, "job-1", INSTANCE) is not None

    assert not await queue.complete(NS, MACHINE, "job-1", OTHER_INSTANCE, JobState.SUCCEEDED, b"{}")

    job = await _job(redis, keys, "job-1")
    assert job["state"] == JobState.RUNNING
    assert job["claimedBy"] == INSTANCE
    assert "result" not in job
    assert await queue.pop_inbox(blocking, [inbox], 0.1, 10) == []


async def test_complete_of_an_unclaimed_job_is_refused(
    queue: JobQueue, registry: Registry, redis: Redis, keys: Keys
) -> None:
    await _online(registry)
    await _enqueue(queue, "job-1")

    assert not await queue.complete(NS, MACHINE, "job-1", INSTANCE, JobState.SUCCEEDED, b"{}")
    assert not await queue.complete(NS, MACHINE, "nope", INSTANCE, JobState.SUCCEEDED, b"{}")
    assert (await _job(redis, keys, "job-1"))["state"] == JobState.QUEUED


async def test_complete_pushes_a_reply_to_the_reply_inbox_and_every_attached_inbox(
    queue: JobQueue, registry: Registry, redis: Redis, keys: Keys, blocking: Redis, inbox: str
) -> None:
    await _online(registry)
    enq = await _enqueue(queue, "job-1", reply_to=inbox)
    other_inbox = keys.inbox(NS, "hub-2")
    third_inbox = keys.inbox(NS, "hub-3")

    attached = await queue.attach(NS, MACHINE, "job-1", other_inbox, RETENTION_MS)
    assert attached.state == JobState.QUEUED
    assert attached.claim_by_ms == enq.claim_by_ms
    assert attached.deadline_ms == enq.deadline_ms
    assert enq.now_ms <= attached.now_ms
    assert await queue.claim(NS, MACHINE, "job-1", INSTANCE) is not None
    assert (await queue.attach(NS, MACHINE, "job-1", third_inbox, RETENTION_MS)).state == JobState.RUNNING
    # Attaching with the reply inbox itself must not make that hub get the reply twice.
    await queue.attach(NS, MACHINE, "job-1", inbox, RETENTION_MS)

    assert await queue.complete(NS, MACHINE, "job-1", INSTANCE, JobState.SUCCEEDED, b'{"success":true}')

    for address in (inbox, other_inbox, third_inbox):
        replies = await queue.pop_inbox(blocking, [address], 0.1, 10)
        assert len(replies) == 1, address
        reply = replies[0]
        assert reply.job_id == "job-1"
        assert reply.machine_id == MACHINE
        assert reply.state is JobState.SUCCEEDED
        assert msgspec.json.decode(bytes(reply.result)) == {"success": True}
        assert await redis.exists(address) == 0
    assert await redis.exists(keys.waiters(NS, MACHINE, "job-1")) == 0


async def test_reply_inbox_expires(queue: JobQueue, registry: Registry, redis: Redis, keys: Keys, inbox: str) -> None:
    await _online(registry)
    await _enqueue(queue, "job-1", reply_to=inbox)
    assert await queue.claim(NS, MACHINE, "job-1", INSTANCE) is not None
    assert await queue.complete(NS, MACHINE, "job-1", INSTANCE, JobState.FAILED, b"{}")

    assert 0 < await redis.pttl(inbox) <= INBOX_TTL_MS


async def test_pop_inbox_waits_on_several_inboxes_and_skips_non_replies(
    queue: JobQueue, registry: Registry, redis: Redis, keys: Keys, blocking: Redis, inbox: str
) -> None:
    other_inbox = keys.inbox(NS, "hub-2")
    await redis.lpush(inbox, b"wake")
    assert await queue.pop_inbox(blocking, [other_inbox, inbox], 0.1, 10) == []

    await _online(registry)
    await _enqueue(queue, "job-1", reply_to=other_inbox)
    assert await queue.claim(NS, MACHINE, "job-1", INSTANCE) is not None
    assert await queue.complete(NS, MACHINE, "job-1", INSTANCE, JobState.SUCCEEDED, b"{}")

    replies = await queue.pop_inbox(blocking, [inbox, other_inbox], 0.1, 10)
    assert [r.job_id for r in replies] == ["job-1"]


async def test_attach_to_a_final_job_returns_its_state_and_result_without_a_waiter(
    queue: JobQueue, registry: Registry, redis: Redis, keys: Keys, inbox: str
) -> None:
    await _enqueue(queue, "offline-job")
    status = await queue.attach(NS, MACHINE, "offline-job", inbox, RETENTION_MS)
    assert status.state == JobState.FAILED
    assert status.result == OFFLINE_RESULT
    assert await redis.exists(keys.waiters(NS, MACHINE, "offline-job")) == 0

    await _online(registry)
    await _enqueue(queue, "done-job")
    assert await queue.claim(NS, MACHINE, "done-job", INSTANCE) is not None
    assert await queue.complete(NS, MACHINE, "done-job", INSTANCE, JobState.SUCCEEDED, b'{"success":true}')
    status = await queue.attach(NS, MACHINE, "done-job", inbox, RETENTION_MS)
    assert status.state == JobState.SUCCEEDED
    assert status.result == b'{"success":true}'
    assert await redis.exists(keys.waiters(NS, MACHINE, "done-job")) == 0


async def test_attach_to_a_missing_job_reports_missing(queue: JobQueue, redis: Redis, keys: Keys, inbox: str) -> None:
    assert (await queue.attach(NS, MACHINE, "nope", inbox, RETENTION_MS)).state == "missing"
    assert await redis.exists(keys.waiters(NS, MACHINE, "nope")) == 0


async def test_enqueue_with_a_used_idempotency_digest_returns_the_first_job(
    queue: JobQueue, registry: Registry, redis: Redis, keys: Keys
) -> None:
    await _online(registry)
    first = await _enqueue(queue, "job-1", idempotency_digest="d1", fingerprint="fp-1")
    second = await _enqueue(queue, "job-2", idempotency_digest="d1", fingerprint="fp-2")

    assert first.status == "queued"
    assert second.status == "duplicate"
    assert second.job_id == "job-1"
    assert second.fingerprint == "fp-1"
    assert await _mailbox(redis, keys) == ["job-1"]
    assert await redis.exists(keys.job(NS, MACHINE, "job-2")) == 0
    assert 0 < await redis.pttl(keys.idempotency(NS, MACHINE, "d1")) <= RETENTION_MS

    other = await _enqueue(queue, "job-3", idempotency_digest="d2", fingerprint="fp-1")
    assert other.status == "queued"
    assert await _mailbox(redis, keys) == ["job-3", "job-1"]


async def test_enqueue_is_idempotent_by_job_id(queue: JobQueue, registry: Registry, redis: Redis, keys: Keys) -> None:
    await _online(registry)
    first = await _enqueue(queue, "job-1")
    assert await queue.claim(NS, MACHINE, "job-1", INSTANCE) is not None
    second = await _enqueue(queue, "job-1")

    assert first.status == "queued"
    assert second.status == "duplicate"
    assert second.job_id == "job-1"
    assert await _mailbox(redis, keys) == ["job-1"]
    assert (await _job(redis, keys, "job-1"))["state"] == JobState.RUNNING
