"""The job protocol on a real Redis: hub and agent sides both speak only through JobQueue."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

import msgspec
import pytest
from redis.asyncio import Redis

from core import scripts
from core.keys import Keys
from core.queue import INBOX_TTL_MS, Enqueued, JobQueue
from core.registry import Registry
from core.schemas import Envelope, JobKind, JobState, MachineMetadata, Reply

NS = "team"
MACHINE = "box-1"
INSTANCE = "agent-a"
OTHER_INSTANCE = "agent-b"
HUB = "hub-1"
OFFLINE_RESULT = b'{"success":false,"code":"offline"}'
ARGS = b'{"directory":"/tmp/x","agent":"claude"}'
PATHS_ARGS = b'{"paths":["/a","/b"]}'
PATHS_RESULT = b'{"exists":{"/a":true,"/b":false}}'
CLAIM_TIMEOUT_MS = 10_000
TIMEOUT_MS = 30_000
RETENTION_MS = 60_000
POLL_S = 5.0


@pytest.fixture
def queue(redis: Redis, keys: Keys) -> JobQueue:
    return JobQueue(redis, keys)


@pytest.fixture
def registry(redis: Redis, keys: Keys) -> Registry:
    return Registry(redis, keys)


@pytest.fixture
def inbox(keys: Keys) -> str:
    return keys.inbox(NS, HUB)


async def _register(registry: Registry, machine_id: str = MACHINE) -> None:
    await registry.register(NS, machine_id, MachineMetadata(hostname=machine_id, platform="linux", version="1.0.0"))


async def _heartbeat(registry: Registry, instance: str = INSTANCE, machine_id: str = MACHINE) -> None:
    await registry.heartbeat(NS, machine_id, instance, b"{}", 60_000)


async def _online(registry: Registry, machine_id: str = MACHINE) -> None:
    """A registered machine with a live heartbeat held by INSTANCE."""
    await _register(registry, machine_id)
    await _heartbeat(registry, INSTANCE, machine_id)


async def _enqueue(
    queue: JobQueue,
    job_id: str,
    *,
    reply_to: str = "",
    claim_timeout_ms: int = CLAIM_TIMEOUT_MS,
    timeout_ms: int = TIMEOUT_MS,
    retention_ms: int = RETENTION_MS,
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
        retention_ms=retention_ms,
        offline_result=OFFLINE_RESULT,
        idempotency_digest=idempotency_digest,
        fingerprint=fingerprint,
        idempotency_ttl_ms=RETENTION_MS if idempotency_digest else 0,
    )


async def _redis_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def _job(queue: JobQueue, job_id: str) -> dict[str, str]:
    record = await queue.job(NS, MACHINE, job_id)
    assert record is not None, f"no record for {job_id}"
    return {k: v.decode() for k, v in record.items()}


async def _mailbox_ids(redis: Redis, keys: Keys) -> list[str]:
    """Job ids on the mailbox, newest first (as stored)."""
    raw = await redis.lrange(keys.mailbox(NS, MACHINE), 0, -1)
    return [msgspec.json.decode(x, type=Envelope).job_id for x in raw]


async def _pop_one(queue: JobQueue, blocking: Redis) -> Envelope:
    jobs = await queue.pop_mailbox(blocking, NS, MACHINE, 0.1, 1)
    assert len(jobs) == 1
    return jobs[0]


async def _replies(queue: JobQueue, blocking: Redis, address: str) -> list[Reply]:
    return await queue.pop_inbox(blocking, [address], 0.1, 10)


def _script_sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


# --- enqueue ---------------------------------------------------------------------------------


async def test_enqueue_for_an_unregistered_machine_returns_unknown_and_records_nothing(
    queue: JobQueue, registry: Registry, redis: Redis, keys: Keys
) -> None:
    # A heartbeat alone (no registration record) does not make a machine known.
    await _heartbeat(registry)

    for kind, args in ((JobKind.SPAWN, ARGS), (JobKind.PATHS, PATHS_ARGS)):
        enq = await _enqueue(queue, f"job-{kind}", kind=kind, args=args, idempotency_digest="d1", fingerprint="fp")

        assert enq.status == "unknown"
        assert enq.job_id == f"job-{kind}"
        assert await queue.job(NS, MACHINE, f"job-{kind}") is None
    assert await redis.exists(keys.mailbox(NS, MACHINE)) == 0
    assert await redis.exists(keys.idempotency(NS, MACHINE, "d1")) == 0

    await _register(registry)
    assert (await _enqueue(queue, "job-after", idempotency_digest="d1", fingerprint="fp")).status == "queued"


async def test_enqueue_for_a_machine_registered_only_via_its_info_key_is_known(
    queue: JobQueue, redis: Redis, keys: Keys
) -> None:
    await redis.hset(keys.info(NS, MACHINE), "metadata", b"{}")

    assert (await _enqueue(queue, "job-1")).status == "offline"


async def test_enqueue_without_heartbeat_records_a_failed_job_and_pushes_nothing(
    queue: JobQueue, registry: Registry, redis: Redis, keys: Keys
) -> None:
    await _register(registry)

    for kind, args in ((JobKind.SPAWN, ARGS), (JobKind.PATHS, PATHS_ARGS)):
        job_id = f"job-{kind}"
        enq = await _enqueue(queue, job_id, kind=kind, args=args)

        assert enq.status == "offline"
        assert enq.job_id == job_id
        job = await _job(queue, job_id)
        assert job["state"] == JobState.FAILED
        assert job["result"] == OFFLINE_RESULT.decode()
        assert job["kind"] == kind
        assert job["machineId"] == MACHINE
        assert 0 < await redis.pttl(keys.job(NS, MACHINE, job_id)) <= RETENTION_MS
    assert await redis.exists(keys.mailbox(NS, MACHINE)) == 0


async def test_enqueue_with_heartbeat_queues_an_envelope_with_redis_clock_deadlines(
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

    [raw] = await redis.lrange(keys.mailbox(NS, MACHINE), 0, -1)
    envelope = msgspec.json.decode(raw, type=Envelope)
    assert envelope.job_id == "job-1"
    assert envelope.kind is JobKind.SPAWN
    assert bytes(envelope.args) == ARGS
    assert envelope.reply_to == inbox
    assert envelope.idempotency == ""
    # The arguments are embedded as JSON, not as an escaped string.
    assert msgspec.json.decode(raw)["args"] == msgspec.json.decode(ARGS)

    job = await _job(queue, "job-1")
    assert job["state"] == JobState.QUEUED
    assert job["kind"] == JobKind.SPAWN
    assert job["machineId"] == MACHINE
    assert job["args"] == ARGS.decode()
    assert job["replyTo"] == inbox
    assert int(job["createdMs"]) == enq.now_ms
    assert int(job["claimBy"]) == enq.claim_by_ms
    assert int(job["deadlineMs"]) == enq.deadline_ms
    assert "idempotency" not in job
    assert 0 < await redis.pttl(keys.job(NS, MACHINE, "job-1")) <= RETENTION_MS


async def test_enqueue_of_a_paths_job_keeps_its_args_only_in_the_envelope(
    queue: JobQueue, registry: Registry, blocking: Redis, inbox: str
) -> None:
    await _online(registry)
    enq = await _enqueue(queue, "job-1", kind=JobKind.PATHS, args=PATHS_ARGS)

    assert enq.status == "queued"
    job = await _job(queue, "job-1")
    assert job["state"] == JobState.QUEUED
    assert job["kind"] == JobKind.PATHS
    assert job.get("args", "") == ""
    assert job["replyTo"] == inbox

    envelope = await _pop_one(queue, blocking)
    assert envelope.job_id == "job-1"
    assert envelope.kind is JobKind.PATHS
    assert bytes(envelope.args) == PATHS_ARGS
    assert envelope.reply_to == inbox


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


async def test_enqueue_with_a_used_idempotency_digest_returns_the_first_job(
    queue: JobQueue, registry: Registry, redis: Redis, keys: Keys, blocking: Redis
) -> None:
    await _online(registry)
    first = await _enqueue(queue, "job-1", idempotency_digest="d1", fingerprint="fp-1")
    second = await _enqueue(queue, "job-2", idempotency_digest="d1", fingerprint="fp-2")

    assert first.status == "queued"
    assert second.status == "duplicate"
    assert second.job_id == "job-1"
    assert second.fingerprint == "fp-1"
    assert await _mailbox_ids(redis, keys) == ["job-1"]
    assert await queue.job(NS, MACHINE, "job-2") is None
    assert 0 < await redis.pttl(keys.idempotency(NS, MACHINE, "d1")) <= RETENTION_MS

    other = await _enqueue(queue, "job-3", idempotency_digest="d2", fingerprint="fp-1")
    assert other.status == "queued"
    assert await _mailbox_ids(redis, keys) == ["job-3", "job-1"]

    # The digest travels to the agent in the envelope, not on the job record.
    envelopes = await queue.pop_mailbox(blocking, NS, MACHINE, 0.1, 10)
    assert [(e.job_id, e.idempotency) for e in envelopes] == [("job-1", "d1"), ("job-3", "d2")]
    for job_id in ("job-1", "job-3"):
        assert "idempotency" not in await _job(queue, job_id)


async def test_enqueue_is_idempotent_by_job_id(queue: JobQueue, registry: Registry, redis: Redis, keys: Keys) -> None:
    await _online(registry)
    first = await _enqueue(queue, "job-1")
    assert await queue.claim(NS, MACHINE, "job-1", INSTANCE)
    second = await _enqueue(queue, "job-1")

    assert first.status == "queued"
    assert second.status == "duplicate"
    assert second.job_id == "job-1"
    assert await _mailbox_ids(redis, keys) == ["job-1"]
    assert (await _job(queue, "job-1"))["state"] == JobState.RUNNING


# --- mailbox -----------------------------------------------------------------------------------


async def test_pop_mailbox_returns_envelopes_oldest_first_and_respects_count(
    queue: JobQueue, registry: Registry, blocking: Redis, inbox: str
) -> None:
    await _online(registry)
    await _enqueue(queue, "job-1")
    await _enqueue(queue, "job-2", kind=JobKind.PATHS, args=PATHS_ARGS)
    await _enqueue(queue, "job-3", idempotency_digest="d3", fingerprint="fp-3")

    first = await queue.pop_mailbox(blocking, NS, MACHINE, 0.1, 2)
    rest = await queue.pop_mailbox(blocking, NS, MACHINE, 0.1, 10)

    assert first == [
        Envelope(job_id="job-1", kind=JobKind.SPAWN, args=msgspec.Raw(ARGS), reply_to=inbox),
        Envelope(job_id="job-2", kind=JobKind.PATHS, args=msgspec.Raw(PATHS_ARGS), reply_to=inbox),
    ]
    assert rest == [
        Envelope(job_id="job-3", kind=JobKind.SPAWN, args=msgspec.Raw(ARGS), reply_to=inbox, idempotency="d3")
    ]


async def test_blocking_pop_on_an_empty_mailbox_returns_nothing_after_its_timeout(
    queue: JobQueue, blocking: Redis
) -> None:
    started = time.monotonic()
    assert await queue.pop_mailbox(blocking, NS, MACHINE, 0.1, 10) == []
    elapsed = time.monotonic() - started
    assert 0.05 <= elapsed < 2.0


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(b"job-0", id="bare-job-id"),
        pytest.param(b"\xff\xfe{", id="not-utf8"),
        pytest.param(b'{"jobId":"job-0"}', id="missing-fields"),
        pytest.param(b'{"jobId":"job-0","kind":"reboot","args":{},"replyTo":"x"}', id="unknown-kind"),
    ],
)
async def test_pop_mailbox_drops_an_undecodable_entry_and_returns_the_next_valid_one(
    queue: JobQueue,
    registry: Registry,
    redis: Redis,
    keys: Keys,
    blocking: Redis,
    caplog: pytest.LogCaptureFixture,
    bad: bytes,
) -> None:
    await _online(registry)
    await redis.lpush(keys.mailbox(NS, MACHINE), bad)
    await _enqueue(queue, "job-1")

    with caplog.at_level(logging.ERROR, logger="core.queue"):
        jobs = await queue.pop_mailbox(blocking, NS, MACHINE, 0.1, 10)

    assert [j.job_id for j in jobs] == ["job-1"]
    assert await redis.exists(keys.mailbox(NS, MACHINE)) == 0, "the bad entry must not be left behind"
    assert any(r.levelno == logging.ERROR and MACHINE in r.getMessage() for r in caplog.records)


# --- claim and abandon ---------------------------------------------------------------------------


async def test_claim_before_the_deadline_marks_the_job_running(
    queue: JobQueue, registry: Registry, redis: Redis
) -> None:
    await _online(registry)
    enq = await _enqueue(queue, "job-1")

    assert await queue.claim(NS, MACHINE, "job-1", INSTANCE) is True

    job = await _job(queue, "job-1")
    assert job["state"] == JobState.RUNNING
    assert job["claimedBy"] == INSTANCE
    assert enq.now_ms <= int(job["claimedMs"]) <= await _redis_ms(redis)
    assert job["args"] == ARGS.decode()


async def test_second_claim_returns_false(queue: JobQueue, registry: Registry) -> None:
    await _online(registry)
    await _enqueue(queue, "job-1")

    assert await queue.claim(NS, MACHINE, "job-1", INSTANCE) is True
    assert await queue.claim(NS, MACHINE, "job-1", INSTANCE) is False
    assert await queue.claim(NS, MACHINE, "job-1", OTHER_INSTANCE) is False
    assert (await _job(queue, "job-1"))["claimedBy"] == INSTANCE


async def test_claim_of_a_missing_job_returns_false(queue: JobQueue) -> None:
    assert await queue.claim(NS, MACHINE, "nope", INSTANCE) is False
    assert await queue.job(NS, MACHINE, "nope") is None


async def test_claim_of_a_final_job_returns_false(queue: JobQueue, registry: Registry) -> None:
    await _register(registry)
    assert (await _enqueue(queue, "offline-job")).status == "offline"

    assert await queue.claim(NS, MACHINE, "offline-job", INSTANCE) is False
    assert (await _job(queue, "offline-job"))["state"] == JobState.FAILED


async def test_claim_after_the_claim_deadline_expires_the_job(
    queue: JobQueue, registry: Registry, redis: Redis
) -> None:
    await _online(registry)
    enq = await _enqueue(queue, "job-1", claim_timeout_ms=5)
    give_up_at = time.monotonic() + POLL_S
    while await _redis_ms(redis) <= enq.claim_by_ms:
        assert time.monotonic() < give_up_at, "Redis TIME never passed the claim deadline"
        await asyncio.sleep(0.002)

    assert await queue.claim(NS, MACHINE, "job-1", INSTANCE) is False
    job = await _job(queue, "job-1")
    assert job["state"] == JobState.EXPIRED
    assert "claimedBy" not in job
    assert int(job["finishedMs"]) > enq.claim_by_ms
    assert await queue.claim(NS, MACHINE, "job-1", OTHER_INSTANCE) is False


async def test_abandon_of_a_queued_job_expires_it_and_a_later_claim_fails(queue: JobQueue, registry: Registry) -> None:
    await _online(registry)
    await _enqueue(queue, "job-1")

    status = await queue.abandon(NS, MACHINE, "job-1", give_up=False)

    assert status.state == JobState.EXPIRED
    assert await queue.claim(NS, MACHINE, "job-1", INSTANCE) is False
    job = await _job(queue, "job-1")
    assert job["state"] == JobState.EXPIRED
    assert "finishedMs" in job


async def test_abandon_of_a_missing_job_reports_missing(queue: JobQueue) -> None:
    assert (await queue.abandon(NS, MACHINE, "nope", give_up=True)).state == "missing"
    assert await queue.job(NS, MACHINE, "nope") is None


async def test_abandon_of_a_final_job_reports_its_state_and_result(queue: JobQueue, registry: Registry) -> None:
    await _register(registry)
    await _enqueue(queue, "offline-job")

    status = await queue.abandon(NS, MACHINE, "offline-job", give_up=True)

    assert status.state == JobState.FAILED
    assert status.result == OFFLINE_RESULT
    assert (await _job(queue, "offline-job"))["state"] == JobState.FAILED


async def test_abandon_without_give_up_leaves_a_running_job_running(queue: JobQueue, registry: Registry) -> None:
    await _online(registry)
    await _enqueue(queue, "job-1")
    assert await queue.claim(NS, MACHINE, "job-1", INSTANCE)

    status = await queue.abandon(NS, MACHINE, "job-1", give_up=False)

    assert status.state == JobState.RUNNING
    assert (await _job(queue, "job-1"))["state"] == JobState.RUNNING


async def test_claim_and_abandon_race_has_exactly_one_winner(queue: JobQueue, registry: Registry) -> None:
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
        return claimed, status.state == JobState.EXPIRED

    outcomes = await asyncio.gather(*(race(i, job_id) for i, job_id in enumerate(job_ids)))

    for job_id, (claim_won, abandon_won) in zip(job_ids, outcomes, strict=True):
        assert claim_won != abandon_won, job_id
        state = (await _job(queue, job_id))["state"]
        assert state == (JobState.RUNNING if claim_won else JobState.EXPIRED), job_id


async def test_give_up_marks_a_running_job_unknown_and_its_claimer_can_still_complete(
    queue: JobQueue, registry: Registry
) -> None:
    await _online(registry)
    await _enqueue(queue, "job-1")
    assert await queue.claim(NS, MACHINE, "job-1", INSTANCE)

    status = await queue.abandon(NS, MACHINE, "job-1", give_up=True)
    assert status.state == JobState.UNKNOWN
    assert (await _job(queue, "job-1"))["state"] == JobState.UNKNOWN

    assert await queue.complete(
        NS, MACHINE, "job-1", INSTANCE, JobState.SUCCEEDED, b'{"success":true}', kind=JobKind.SPAWN
    )
    job = await _job(queue, "job-1")
    assert job["state"] == JobState.SUCCEEDED
    assert job["result"] == '{"success":true}'
    assert "finishedMs" in job


# --- finish (read-only jobs, no claim) -----------------------------------------------------------


@pytest.mark.parametrize("state", [JobState.SUCCEEDED, JobState.FAILED])
async def test_finish_of_a_queued_job_settles_it_and_replies(
    queue: JobQueue, registry: Registry, redis: Redis, blocking: Redis, inbox: str, state: JobState
) -> None:
    await _online(registry)
    enq = await _enqueue(queue, "job-1", kind=JobKind.PATHS, args=PATHS_ARGS, reply_to=inbox)
    envelope = await _pop_one(queue, blocking)

    await queue.finish(NS, MACHINE, envelope, INSTANCE, state, PATHS_RESULT)

    job = await _job(queue, "job-1")
    assert job["state"] == state
    assert job["result"] == PATHS_RESULT.decode()
    assert job["claimedBy"] == INSTANCE
    assert enq.now_ms <= int(job["claimedMs"]) == int(job["finishedMs"]) <= await _redis_ms(redis)
    assert 0 < await redis.pttl(inbox) <= INBOX_TTL_MS
    [reply] = await _replies(queue, blocking, inbox)
    assert reply.job_id == "job-1"
    assert reply.machine_id == MACHINE
    assert reply.state is state
    assert bytes(reply.result) == PATHS_RESULT
    # A queued job settled by finish can no longer be claimed or expired.
    assert await queue.claim(NS, MACHINE, "job-1", OTHER_INSTANCE) is False
    assert (await queue.abandon(NS, MACHINE, "job-1", give_up=True)).state == state


async def test_finish_after_the_hub_abandoned_the_job_leaves_it_expired(
    queue: JobQueue, registry: Registry, blocking: Redis, inbox: str
) -> None:
    await _online(registry)
    await _enqueue(queue, "job-1", kind=JobKind.PATHS, args=PATHS_ARGS, reply_to=inbox)
    envelope = await _pop_one(queue, blocking)
    assert (await queue.abandon(NS, MACHINE, "job-1", give_up=False)).state == JobState.EXPIRED

    await queue.finish(NS, MACHINE, envelope, INSTANCE, JobState.SUCCEEDED, PATHS_RESULT)

    job = await _job(queue, "job-1")
    assert job["state"] == JobState.EXPIRED
    assert "result" not in job
    assert "claimedBy" not in job
    # The reply is still pushed (nobody waits for it any more).
    assert [r.job_id for r in await _replies(queue, blocking, inbox)] == ["job-1"]


async def test_finish_never_overwrites_a_settled_or_claimed_job(
    queue: JobQueue, registry: Registry, blocking: Redis, inbox: str
) -> None:
    await _online(registry)
    await _enqueue(queue, "paths-job", kind=JobKind.PATHS, args=PATHS_ARGS, reply_to=inbox)
    await _enqueue(queue, "spawn-job", reply_to=inbox)
    paths_envelope, spawn_envelope = await queue.pop_mailbox(blocking, NS, MACHINE, 0.1, 10)

    await queue.finish(NS, MACHINE, paths_envelope, INSTANCE, JobState.SUCCEEDED, PATHS_RESULT)
    await queue.finish(NS, MACHINE, paths_envelope, OTHER_INSTANCE, JobState.FAILED, b'{"code":"late"}')
    job = await _job(queue, "paths-job")
    assert job["state"] == JobState.SUCCEEDED
    assert job["result"] == PATHS_RESULT.decode()
    assert job["claimedBy"] == INSTANCE

    assert await queue.claim(NS, MACHINE, "spawn-job", INSTANCE)
    await queue.finish(NS, MACHINE, spawn_envelope, OTHER_INSTANCE, JobState.FAILED, b"{}")
    job = await _job(queue, "spawn-job")
    assert job["state"] == JobState.RUNNING
    assert job["claimedBy"] == INSTANCE
    assert "result" not in job


async def test_finish_of_a_missing_job_creates_no_record(
    queue: JobQueue, blocking: Redis, inbox: str, redis: Redis
) -> None:
    envelope = Envelope(job_id="gone", kind=JobKind.PATHS, args=msgspec.Raw(PATHS_ARGS), reply_to=inbox)

    await queue.finish(NS, MACHINE, envelope, INSTANCE, JobState.SUCCEEDED, PATHS_RESULT)

    assert await queue.job(NS, MACHINE, "gone") is None
    assert [r.job_id for r in await _replies(queue, blocking, inbox)] == ["gone"]


async def test_finish_after_script_flush_reruns_the_script_and_settles_the_job(
    queue: JobQueue, registry: Registry, redis: Redis, blocking: Redis, inbox: str
) -> None:
    await _online(registry)
    await _enqueue(queue, "job-1", kind=JobKind.PATHS, args=PATHS_ARGS, reply_to=inbox)
    envelope = await _pop_one(queue, blocking)
    finish_sha = _script_sha(scripts.FINISH)
    await redis.script_flush()
    assert await redis.script_exists(finish_sha) == [False]

    await queue.finish(NS, MACHINE, envelope, INSTANCE, JobState.SUCCEEDED, PATHS_RESULT)

    assert await redis.script_exists(finish_sha) == [True], "the NoScript fallback must have loaded FINISH"
    job = await _job(queue, "job-1")
    assert job["state"] == JobState.SUCCEEDED
    assert job["result"] == PATHS_RESULT.decode()
    assert job["claimedBy"] == INSTANCE
    [reply] = await _replies(queue, blocking, inbox)
    assert reply.job_id == "job-1"
    assert reply.state is JobState.SUCCEEDED


# --- complete ------------------------------------------------------------------------------------


async def test_complete_by_another_instance_is_fenced(
    queue: JobQueue, registry: Registry, blocking: Redis, inbox: str
) -> None:
    await _online(registry)
    await _enqueue(queue, "job-1")
    assert await queue.claim(NS, MACHINE, "job-1", INSTANCE)

    assert not await queue.complete(NS, MACHINE, "job-1", OTHER_INSTANCE, JobState.SUCCEEDED, b"{}", kind=JobKind.SPAWN)

    job = await _job(queue, "job-1")
    assert job["state"] == JobState.RUNNING
    assert job["claimedBy"] == INSTANCE
    assert "result" not in job
    assert await _replies(queue, blocking, inbox) == []


async def test_complete_of_an_unclaimed_job_is_refused(queue: JobQueue, registry: Registry) -> None:
    await _online(registry)
    await _enqueue(queue, "job-1")

    assert not await queue.complete(NS, MACHINE, "job-1", INSTANCE, JobState.SUCCEEDED, b"{}", kind=JobKind.SPAWN)
    assert not await queue.complete(NS, MACHINE, "nope", INSTANCE, JobState.SUCCEEDED, b"{}", kind=JobKind.SPAWN)
    assert (await _job(queue, "job-1"))["state"] == JobState.QUEUED
    assert await queue.job(NS, MACHINE, "nope") is None


async def test_complete_of_a_final_job_is_refused(
    queue: JobQueue, registry: Registry, blocking: Redis, inbox: str
) -> None:
    await _online(registry)
    await _enqueue(queue, "job-1", reply_to=inbox)
    assert await queue.claim(NS, MACHINE, "job-1", INSTANCE)
    assert await queue.complete(
        NS, MACHINE, "job-1", INSTANCE, JobState.SUCCEEDED, b'{"success":true}', kind=JobKind.SPAWN
    )
    assert len(await _replies(queue, blocking, inbox)) == 1

    assert not await queue.complete(
        NS, MACHINE, "job-1", INSTANCE, JobState.FAILED, b'{"success":false}', kind=JobKind.SPAWN
    )

    job = await _job(queue, "job-1")
    assert job["state"] == JobState.SUCCEEDED
    assert job["result"] == '{"success":true}'
    assert await _replies(queue, blocking, inbox) == []


async def test_complete_pushes_a_reply_to_the_reply_inbox_and_every_attached_inbox(
    queue: JobQueue, registry: Registry, redis: Redis, keys: Keys, blocking: Redis, inbox: str
) -> None:
    await _online(registry)
    enq = await _enqueue(queue, "job-1", reply_to=inbox)
    other_inbox = keys.inbox(NS, "hub-2")
    third_inbox = keys.inbox(NS, "hub-3")

    attached = await queue.attach(NS, MACHINE, "job-1", other_inbox, RETENTION_MS)
    assert attached.state == JobState.QUEUED
    assert attached.result == b""
    assert attached.claim_by_ms == enq.claim_by_ms
    assert attached.deadline_ms == enq.deadline_ms
    assert enq.now_ms <= attached.now_ms
    assert 0 < await redis.pttl(keys.waiters(NS, MACHINE, "job-1")) <= RETENTION_MS
    assert await queue.claim(NS, MACHINE, "job-1", INSTANCE)
    assert (await queue.attach(NS, MACHINE, "job-1", third_inbox, RETENTION_MS)).state == JobState.RUNNING
    # Attaching with the reply inbox itself must not make that hub get the reply twice.
    await queue.attach(NS, MACHINE, "job-1", inbox, RETENTION_MS)

    assert await queue.complete(
        NS, MACHINE, "job-1", INSTANCE, JobState.SUCCEEDED, b'{"success":true}', kind=JobKind.SPAWN
    )

    for address in (inbox, other_inbox, third_inbox):
        replies = await _replies(queue, blocking, address)
        assert len(replies) == 1, address
        reply = replies[0]
        assert reply.job_id == "job-1"
        assert reply.machine_id == MACHINE
        assert reply.state is JobState.SUCCEEDED
        assert msgspec.json.decode(bytes(reply.result)) == {"success": True}
        assert await redis.exists(address) == 0
    assert await redis.exists(keys.waiters(NS, MACHINE, "job-1")) == 0


async def test_reply_inbox_expires(queue: JobQueue, registry: Registry, redis: Redis, inbox: str) -> None:
    await _online(registry)
    await _enqueue(queue, "job-1", reply_to=inbox)
    assert await queue.claim(NS, MACHINE, "job-1", INSTANCE)
    assert await queue.complete(NS, MACHINE, "job-1", INSTANCE, JobState.FAILED, b"{}", kind=JobKind.SPAWN)

    assert 0 < await redis.pttl(inbox) <= INBOX_TTL_MS


# --- recover -------------------------------------------------------------------------------------


async def test_recover_is_refused_while_the_old_instance_holds_the_heartbeat_and_accepted_after(
    queue: JobQueue, registry: Registry, redis: Redis, keys: Keys, blocking: Redis, inbox: str
) -> None:
    await _online(registry)
    await _enqueue(queue, "job-1", reply_to=inbox)
    assert await queue.claim(NS, MACHINE, "job-1", INSTANCE)
    other_inbox = keys.inbox(NS, "hub-2")
    assert (await queue.attach(NS, MACHINE, "job-1", other_inbox, RETENTION_MS)).state == JobState.RUNNING

    assert not await queue.recover(
        NS, MACHINE, "job-1", INSTANCE, OTHER_INSTANCE, JobState.SUCCEEDED, b"{}", kind=JobKind.SPAWN
    )
    job = await _job(queue, "job-1")
    assert job["state"] == JobState.RUNNING
    assert "recoveredBy" not in job
    assert await _replies(queue, blocking, inbox) == []

    await _heartbeat(registry, OTHER_INSTANCE)
    assert await queue.recover(
        NS, MACHINE, "job-1", INSTANCE, OTHER_INSTANCE, JobState.SUCCEEDED, b'{"success":true}', kind=JobKind.SPAWN
    )

    job = await _job(queue, "job-1")
    assert job["state"] == JobState.SUCCEEDED
    assert job["result"] == '{"success":true}'
    assert job["claimedBy"] == INSTANCE
    assert job["recoveredBy"] == OTHER_INSTANCE
    assert "finishedMs" in job
    for address in (inbox, other_inbox):
        replies = await _replies(queue, blocking, address)
        assert [(r.job_id, r.machine_id, r.state) for r in replies] == [("job-1", MACHINE, JobState.SUCCEEDED)]
        assert msgspec.json.decode(bytes(replies[0].result)) == {"success": True}
    assert await redis.exists(keys.waiters(NS, MACHINE, "job-1")) == 0
    # Settled once: a second recovery (or a late complete by the old instance) changes nothing.
    assert not await queue.recover(
        NS, MACHINE, "job-1", INSTANCE, OTHER_INSTANCE, JobState.FAILED, b"{}", kind=JobKind.SPAWN
    )
    assert not await queue.complete(NS, MACHINE, "job-1", INSTANCE, JobState.FAILED, b"{}", kind=JobKind.SPAWN)
    assert (await _job(queue, "job-1"))["state"] == JobState.SUCCEEDED


async def test_recover_is_accepted_when_no_instance_holds_the_heartbeat(
    queue: JobQueue, registry: Registry, blocking: Redis, inbox: str
) -> None:
    await _online(registry)
    await _enqueue(queue, "job-1", reply_to=inbox)
    assert await queue.claim(NS, MACHINE, "job-1", INSTANCE)
    await registry.release(NS, MACHINE, INSTANCE)

    assert await queue.recover(
        NS, MACHINE, "job-1", INSTANCE, OTHER_INSTANCE, JobState.FAILED, b'{"code":"lost"}', kind=JobKind.SPAWN
    )

    job = await _job(queue, "job-1")
    assert job["state"] == JobState.FAILED
    assert job["recoveredBy"] == OTHER_INSTANCE
    assert [r.state for r in await _replies(queue, blocking, inbox)] == [JobState.FAILED]


async def test_recover_for_a_wrong_old_instance_is_refused(
    queue: JobQueue, registry: Registry, blocking: Redis, inbox: str
) -> None:
    await _online(registry)
    await _enqueue(queue, "job-1", reply_to=inbox)
    assert await queue.claim(NS, MACHINE, "job-1", INSTANCE)
    await _heartbeat(registry, "agent-c")

    assert not await queue.recover(
        NS, MACHINE, "job-1", OTHER_INSTANCE, "agent-c", JobState.SUCCEEDED, b"{}", kind=JobKind.SPAWN
    )

    job = await _job(queue, "job-1")
    assert job["state"] == JobState.RUNNING
    assert job["claimedBy"] == INSTANCE
    assert "recoveredBy" not in job
    assert await _replies(queue, blocking, inbox) == []


async def test_recover_of_an_unknown_job_is_accepted_and_of_an_unclaimed_or_missing_job_refused(
    queue: JobQueue, registry: Registry
) -> None:
    await _online(registry)
    await _enqueue(queue, "given-up")
    await _enqueue(queue, "queued")
    assert await queue.claim(NS, MACHINE, "given-up", INSTANCE)
    assert (await queue.abandon(NS, MACHINE, "given-up", give_up=True)).state == JobState.UNKNOWN
    await _heartbeat(registry, OTHER_INSTANCE)

    assert await queue.recover(
        NS, MACHINE, "given-up", INSTANCE, OTHER_INSTANCE, JobState.SUCCEEDED, b"{}", kind=JobKind.SPAWN
    )
    assert (await _job(queue, "given-up"))["state"] == JobState.SUCCEEDED
    assert not await queue.recover(
        NS, MACHINE, "queued", INSTANCE, OTHER_INSTANCE, JobState.SUCCEEDED, b"{}", kind=JobKind.SPAWN
    )
    assert (await _job(queue, "queued"))["state"] == JobState.QUEUED
    assert not await queue.recover(
        NS, MACHINE, "nope", INSTANCE, OTHER_INSTANCE, JobState.SUCCEEDED, b"{}", kind=JobKind.SPAWN
    )
    assert await queue.job(NS, MACHINE, "nope") is None


# --- inbox, attach, job ------------------------------------------------------------------------


async def test_pop_inbox_waits_on_several_inboxes_and_skips_non_replies(
    queue: JobQueue, registry: Registry, redis: Redis, keys: Keys, blocking: Redis, inbox: str
) -> None:
    other_inbox = keys.inbox(NS, "hub-2")
    await redis.lpush(inbox, b"wake")
    assert await queue.pop_inbox(blocking, [other_inbox, inbox], 0.1, 10) == []

    await _online(registry)
    await _enqueue(queue, "job-1", reply_to=other_inbox)
    assert await queue.claim(NS, MACHINE, "job-1", INSTANCE)
    assert await queue.complete(NS, MACHINE, "job-1", INSTANCE, JobState.SUCCEEDED, b"{}", kind=JobKind.SPAWN)

    replies = await queue.pop_inbox(blocking, [inbox, other_inbox], 0.1, 10)
    assert [r.job_id for r in replies] == ["job-1"]


async def test_attach_to_a_final_job_returns_its_state_and_result_without_a_waiter(
    queue: JobQueue, registry: Registry, redis: Redis, keys: Keys, blocking: Redis, inbox: str
) -> None:
    await _register(registry)
    await _enqueue(queue, "offline-job")
    status = await queue.attach(NS, MACHINE, "offline-job", inbox, RETENTION_MS)
    assert status.state == JobState.FAILED
    assert status.result == OFFLINE_RESULT
    assert await redis.exists(keys.waiters(NS, MACHINE, "offline-job")) == 0

    await _heartbeat(registry)
    await _enqueue(queue, "done-job")
    assert await queue.claim(NS, MACHINE, "done-job", INSTANCE)
    assert await queue.complete(
        NS, MACHINE, "done-job", INSTANCE, JobState.SUCCEEDED, b'{"success":true}', kind=JobKind.SPAWN
    )
    await _replies(queue, blocking, inbox)
    status = await queue.attach(NS, MACHINE, "done-job", inbox, RETENTION_MS)
    assert status.state == JobState.SUCCEEDED
    assert status.result == b'{"success":true}'
    assert await redis.exists(keys.waiters(NS, MACHINE, "done-job")) == 0

    await _enqueue(queue, "paths-job", kind=JobKind.PATHS, args=PATHS_ARGS)
    *_, paths_envelope = await queue.pop_mailbox(blocking, NS, MACHINE, 0.1, 10)
    assert paths_envelope.job_id == "paths-job"
    await queue.finish(NS, MACHINE, paths_envelope, INSTANCE, JobState.SUCCEEDED, PATHS_RESULT)
    status = await queue.attach(NS, MACHINE, "paths-job", inbox, RETENTION_MS)
    assert status.state == JobState.SUCCEEDED
    assert status.result == PATHS_RESULT
    assert await redis.exists(keys.waiters(NS, MACHINE, "paths-job")) == 0


async def test_attach_to_a_missing_job_reports_missing(queue: JobQueue, redis: Redis, keys: Keys, inbox: str) -> None:
    assert (await queue.attach(NS, MACHINE, "nope", inbox, RETENTION_MS)).state == "missing"
    assert await redis.exists(keys.waiters(NS, MACHINE, "nope")) == 0


async def test_job_returns_the_stored_record_and_none_once_it_expires(
    queue: JobQueue, registry: Registry, redis: Redis
) -> None:
    await _online(registry)
    assert await queue.job(NS, MACHINE, "job-1") is None
    enq = await _enqueue(queue, "job-1", retention_ms=50)

    record = await queue.job(NS, MACHINE, "job-1")

    assert record is not None
    assert all(isinstance(v, bytes) for v in record.values())
    assert record["state"] == b"queued"
    assert record["kind"] == b"spawn"
    assert record["machineId"] == MACHINE.encode()
    assert record["args"] == ARGS
    assert int(record["claimBy"]) == enq.claim_by_ms
    give_up_at = time.monotonic() + POLL_S
    while await queue.job(NS, MACHINE, "job-1") is not None:
        assert time.monotonic() < give_up_at, "the job record never expired"
        await asyncio.sleep(0.01)
