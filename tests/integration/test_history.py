"""The namespace's job index: GET /api/jobs reads O(its page), not O(machines) or O(jobs)."""

from __future__ import annotations

import uuid

import msgspec
from redis.asyncio import Redis

from core.history import JobHistory
from core.keys import Keys
from core.lua import Scripts
from core.queue import JobQueue
from core.schemas import Envelope, JobKind
from tests import machines
from tests.integration.conftest import commands_during

NS = "team"


async def spawn(queue: JobQueue, machine_id: str) -> str:
    job_id = f"{machine_id}.{uuid.uuid4().hex}"
    envelope = Envelope(job_id=job_id, kind=JobKind.SPAWN, args=msgspec.Raw(b"{}"), reply_to="0" * 16, secret="s")
    enqueued = await queue.enqueue(
        NS,
        machine_id,
        envelope,
        record_args=b"{}",
        claim_timeout_ms=30_000,
        timeout_ms=40_000,
        retention_ms=60_000,
        offline_result=b"{}",
        max_queued=1000,
    )
    assert enqueued.status == "queued"
    return job_id


async def test_a_page_of_jobs_costs_the_same_however_many_machines_and_jobs(redis: Redis, keys: Keys) -> None:
    queue = JobQueue(redis, keys, Scripts(redis, can_load=True))
    history = JobHistory(redis, keys)
    for machine_id in ("busy-1", "busy-2"):
        await machines.add(redis, keys, NS, machine_id)
    jobs = [await spawn(queue, f"busy-{1 + i % 2}") for i in range(30)]
    few, few_cost = await commands_during(redis, lambda: history.recent(NS, limit=20))
    for i in range(500):  # machines that never ran a job
        await machines.add(redis, keys, NS, f"idle-{i:03d}", online=False)
    jobs += [await spawn(queue, f"busy-{1 + i % 2}") for i in range(300)]
    many, many_cost = await commands_during(redis, lambda: history.recent(NS, limit=20))
    # Newest first (jobs made in one millisecond come in id order): a page of the recorded jobs.
    for page in (few, many):
        assert len(page.items) == 20 and {item.job_id for item in page.items} <= set(jobs)
        assert [item.created_ms for item in page.items] == sorted(
            (item.created_ms for item in page.items), reverse=True
        )
    assert many_cost == few_cost <= 1 + 21  # the index range, then one GET per job read (one pipeline)
