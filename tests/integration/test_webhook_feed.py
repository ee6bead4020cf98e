"""The webhook feed on a real Redis (core.webhook_feed): one delivery per webhook and event, a
cursor that survives the reader, one reader at a time, and the worker's queue dropping repeats."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest
from redis.asyncio import Redis

from core.deliveries import Delivery
from core.events import EventLog, JobEvent, MachineEvent, encode
from core.keys import Keys
from core.lua import Scripts
from core.settings import Settings
from core.webhook_feed import WebhookFeed
from core.webhooks import EventName, WebhookRecord, WebhookStore
from tests.waiting import eventually
from worker.settings import deliveries_queue_name, delivery_queue, redis_pool

NS = "team"


class Collected:
    """An Enqueue that keeps what it is given, and drops an id it already has (as the queue does)."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []

    async def __call__(self, delivery: Delivery) -> bool:
        if any(d.id == delivery.id for d in self.deliveries):
            return False
        self.deliveries.append(delivery)
        return True

    def seen(self) -> list[tuple[str, str]]:
        return [(d.webhook_id, d.event) for d in self.deliveries]


@pytest.fixture
def store(redis: Redis, keys: Keys) -> WebhookStore:
    return WebhookStore(redis, keys, Scripts(redis, can_load=True))


@pytest.fixture
def log(keys: Keys) -> EventLog:
    return EventLog(keys)


def feed(settings: Settings, redis: Redis, blocking: Redis, enqueue: Collected) -> WebhookFeed:
    return WebhookFeed(settings, redis, blocking, enqueue)


async def add(store: WebhookStore, *events: EventName) -> WebhookRecord:
    return await store.create(NS, "https://ci.example.com/hook", list(events), limit=20)


def job(state: str, job_id: str = "m.1") -> JobEvent:
    return JobEvent(job_id=job_id, machine_id="m", kind="spawn", state=state)


@pytest.mark.parametrize("cluster", [False, True], ids=["one-xread", "stream-by-stream"])
async def test_each_event_a_webhook_asked_for_becomes_one_delivery(
    settings: Settings, redis: Redis, blocking: Redis, store: WebhookStore, log: EventLog, keys: Keys, cluster: bool
) -> None:
    if cluster:  # the Cluster's way of reading, against a plain Redis: one stream at a time
        settings = msgspec.structs.replace(settings, redis_cluster=True, worker_redis_url=settings.redis_url)
    jobs = await add(store, "job.failed", "job.succeeded")
    machines = await add(store, "machine.online")
    for event in (job("running"), job("failed"), MachineEvent(machine_id="m", state="online"), job("succeeded")):
        await log.publish(redis, NS, event)
    await log.publish(redis, NS, MachineEvent(machine_id="m", state="updated"))
    collected = Collected()
    assert await feed(settings, redis, blocking, collected).step() == 3
    assert collected.seen() == [(jobs.id, "job.failed"), (machines.id, "machine.online"), (jobs.id, "job.succeeded")]
    first = collected.deliveries[0]
    assert msgspec.json.decode(first.data) == {
        "type": "job",
        "jobId": "m.1",
        "machineId": "m",
        "kind": "spawn",
        "state": "failed",
    }
    newest = (await redis.xrevrange(keys.events(NS), count=1))[0][0]
    assert await redis.get(keys.webhook_cursor(NS)) == newest


async def test_a_restarted_reader_goes_on_after_its_cursor(
    settings: Settings, redis: Redis, blocking: Redis, store: WebhookStore, log: EventLog
) -> None:
    hook = await add(store, "job.failed")
    await log.publish(redis, NS, job("failed", "m.1"))
    first = Collected()
    assert await feed(settings, redis, blocking, first).step() == 1
    await log.publish(redis, NS, job("failed", "m.2"))
    second = Collected()  # a new worker, with a queue that remembers nothing
    assert await feed(settings, redis, blocking, second).step() == 1
    assert [msgspec.json.decode(d.data)["jobId"] for d in second.deliveries] == ["m.2"]
    assert second.deliveries[0].webhook_id == hook.id


async def test_a_webhook_is_sent_only_what_happens_after_it_is_added(
    settings: Settings, redis: Redis, blocking: Redis, store: WebhookStore, keys: Keys
) -> None:
    async def at(ms: int, job_id: str) -> None:  # an event with a chosen time (its stream id)
        await redis.xadd(keys.events(NS), {"e": encode(job("failed", job_id))}, id=f"{ms}-0")

    early = await add(store, "job.failed")
    clock: list[int] = [0]

    async def tick() -> None:
        seconds, micros = await redis.time()
        clock[0] = int(seconds) * 1000 + int(micros) // 1000

    while clock[0] <= early.created_ms:  # the second webhook is made at a later millisecond
        await tick()
    late = await add(store, "job.failed")
    await at(early.created_ms - 1, "m.before")  # before the first: behind the cursor its creation set
    await at(late.created_ms - 1, "m.between")
    await at(late.created_ms + 1, "m.after")
    collected = Collected()
    await feed(settings, redis, blocking, collected).step()
    got = [(d.webhook_id, msgspec.json.decode(d.data)["jobId"]) for d in collected.deliveries]
    assert got == [(early.id, "m.between"), (early.id, "m.after"), (late.id, "m.after")]


async def test_a_batch_read_again_is_queued_once(
    settings: Settings, redis: Redis, blocking: Redis, store: WebhookStore, log: EventLog, keys: Keys
) -> None:
    """A reader that stopped after queueing but before saving its cursor: the next one reads the
    same events, and the worker's real queue (arq) drops every delivery it already holds."""
    await add(store, "job.failed", "job.expired")
    for state in ("failed", "expired", "failed"):
        await log.publish(redis, NS, job(state))
    before = await redis.get(keys.webhook_cursor(NS))
    pool = redis_pool(settings)
    try:
        enqueue = delivery_queue(pool, settings)
        assert await WebhookFeed(settings, redis, blocking, enqueue).step() == 3
        await redis.set(keys.webhook_cursor(NS), before)  # as if it died before saving the cursor
        assert await WebhookFeed(settings, redis, blocking, enqueue).step() == 0
        assert await pool.zcard(deliveries_queue_name(settings)) == 3
    finally:
        await pool.delete(deliveries_queue_name(settings))
        await pool.aclose()


async def test_without_webhooks_nothing_is_read(
    settings: Settings, redis: Redis, blocking: Redis, store: WebhookStore, log: EventLog
) -> None:
    hook = await add(store, "job.failed")
    assert await store.remove(NS, hook.id)
    await log.publish(redis, NS, job("failed"))
    collected = Collected()
    assert await feed(settings, redis, blocking, collected).step() is None
    assert collected.deliveries == []


@pytest.fixture
async def second_blocking(settings: Settings) -> AsyncIterator[Redis]:
    from core.connections import blocking_client

    client = blocking_client(settings)
    yield client
    await client.aclose()


async def test_one_reader_at_a_time_and_the_next_takes_over_when_it_stops(
    settings: Settings, redis: Redis, blocking: Redis, second_blocking: Redis, store: WebhookStore, log: EventLog
) -> None:
    await add(store, "job.failed")
    first, second = Collected(), Collected()
    a = feed(settings, redis, blocking, first)
    b = feed(settings, redis, second_blocking, second)
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    running_a = asyncio.create_task(a.run(stop_a))
    await eventually(lambda: a.holding, "the first reader to hold the lease")
    running_b = asyncio.create_task(b.run(stop_b))
    await log.publish(redis, NS, job("failed", "m.1"))
    await eventually(lambda: first.deliveries, "the first reader to queue the delivery")
    assert not b.holding and second.deliveries == []
    stop_a.set()
    await running_a  # releases the lease on its way out
    await log.publish(redis, NS, job("failed", "m.2"))
    await eventually(lambda: second.deliveries, "the second reader to take over", timeout_s=10)
    stop_b.set()
    await running_b
    assert [msgspec.json.decode(d.data)["jobId"] for d in second.deliveries] == ["m.2"]
    assert len(first.deliveries) == 1
