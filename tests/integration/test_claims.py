"""The agent's claimed jobs on a real Redis: a spawn Redis hands out again (a failover lost its
claim) is answered from the journal and never run twice."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from core.keys import Keys
from core.lua import Scripts
from core.queue import JobQueue
from core.schemas import Envelope, JobState
from core.settings import Settings
from machine_agent.claims import NOT_REPLICATED, ClaimedJobs
from machine_agent.journal import Entry, Event, Journal, now_ms
from tests.integration.test_queue import HUB, INSTANCE, MACHINE, NS, RESULT, enqueue, envelope, job_id, online


class NeverRun:
    """An executor for jobs that must not run (again)."""

    async def run(self, job: Envelope) -> tuple[JobState, bytes]:
        raise AssertionError(f"job {job.job_id} ran")


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    journal = Journal(tmp_path, retention_s=3600)
    yield journal
    journal.close()


def claims(settings: Settings, queue: JobQueue, journal: Journal) -> ClaimedJobs:
    return ClaimedJobs(
        settings,
        queue,
        journal,
        NeverRun(),  # type: ignore[arg-type]
        ns=NS,
        machine_id=MACHINE,
        instance=INSTANCE,
        stopping=asyncio.Event(),
    )


async def stored(redis: Redis, keys: Keys, jid: str) -> dict[str, str]:
    record: dict[str, str] = json.loads(await redis.get(keys.job(NS, MACHINE, jid)))
    return record


async def test_a_spawn_handed_out_again_is_answered_from_the_journal(
    redis: Redis, keys: Keys, settings: Settings, journal: Journal
) -> None:
    queue = JobQueue(redis, keys, Scripts(redis, can_load=True))
    await online(redis, keys)
    jid = job_id()
    await enqueue(queue, jid)  # queued again, as on a replica that never got the first claim
    for event, extra in ((Event.CLAIMED, {}), (Event.FINISHED, {"result": RESULT, "session_id": "s1"})):
        journal.record(Entry(event=event, job_id=jid, instance=INSTANCE, at_ms=now_ms(), **extra), durable=False)

    await claims(settings, queue, journal).run(envelope(jid))

    record = await stored(redis, keys, jid)
    assert (record["state"], record["result"]) == ("succeeded", RESULT.decode())
    assert await redis.llen(keys.inbox(HUB)) == 1, "the waiting hub is answered"
    assert journal.jobs[jid].last is Event.REPORTED


async def test_an_unreplicated_claim_stays_not_started_when_the_job_comes_again(
    redis: Redis, keys: Keys, settings: Settings, journal: Journal
) -> None:
    scripts = Scripts(redis, can_load=True)
    await online(redis, keys)
    jid = job_id()
    await enqueue(JobQueue(redis, keys, scripts), jid)
    waiting = JobQueue(redis, keys, scripts, wait_replicas=1, wait_timeout_ms=10)  # this Redis has no replica

    await claims(settings, waiting, journal).run(envelope(jid))
    assert (await stored(redis, keys, jid))["result"] == NOT_REPLICATED.decode()

    # A failover lost the claim and the answer; the job is handed out again, now claimable.
    await redis.delete(keys.job(NS, MACHINE, jid))
    await enqueue(JobQueue(redis, keys, scripts), jid)
    await claims(settings, JobQueue(redis, keys, scripts), journal).run(envelope(jid))
    record = await stored(redis, keys, jid)
    assert (record["state"], json.loads(record["result"])["code"]) == ("failed", "not_started")
