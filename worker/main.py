"""Run the background worker, or check that one is alive: the whole interface to arq.

`run(settings)` blocks until SIGTERM or SIGINT: it stops taking jobs, lets a running sweep or
delivery finish (up to STOP_GRACE_S), removes its health key and returns. Beside arq's two Workers
(sweeps; webhook deliveries) it runs two listeners: heartbeat notifications and the webhook feed
(given LISTENER_GRACE_S to end on a stop, then cancelled: a blocked read does not hold it up).
When Redis fails under it, it starts over after a pause, as the agent does. `check(settings)` is
the container health check: 0 while some worker refreshed the queue's health key within
`worker_health_check_interval_s` (+1 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

import uvloop
from arq.connections import ArqRedis
from arq.worker import Worker
from redis.exceptions import RedisError

from core.connections import REDIS_FAILURES, Backoff, blocking_client, request_client
from core.keys import Keys
from core.notifications import follow_heartbeats
from core.outages import OutageGrace
from core.settings import Settings
from core.sweeps import Sweeper
from core.webhook_feed import WebhookFeed
from worker import tasks
from worker.settings import (
    arq_settings,
    deliveries_worker_settings,
    delivery_queue,
    health_check_keys,
    redis_pool,
    worker_settings,
)

log = logging.getLogger(__name__)
STOP_GRACE_S = 10.0
LISTENER_GRACE_S = 1.0


def run(settings: Settings) -> None:
    """Run the worker in the foreground until SIGTERM or SIGINT."""
    worker_settings(settings)  # a bad interval fails here, before anything starts
    deliveries_worker_settings(settings)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(settings))


def check(settings: Settings) -> int:
    """0 when a worker of this deployment is alive, else 1 (for a container health check)."""
    return asyncio.run(_check(settings))


async def _check(settings: Settings) -> int:
    """Both arq Workers of a worker process (sweeps, webhook deliveries) refresh their keys."""
    keys = health_check_keys(settings)
    redis = request_client(arq_settings(settings))
    try:
        health = dict(zip(keys, await redis.mget(list(keys.values())), strict=True))
    except (RedisError, OSError) as exc:
        log.warning("health check failed: cannot reach Redis (%s)", exc)
        return 1
    finally:
        await redis.aclose()
    missing = [f"{what} ({keys[what]})" for what, value in health.items() if value is None]
    if missing:
        log.warning("health check failed: no worker refreshed the key of %s", ", ".join(missing))
        return 1
    for what, value in health.items():
        log.info("health check passed: %s: %s", what, value.decode(errors="replace"))
    return 0


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run the worker until `stop` is set (by default: on SIGTERM or SIGINT)."""
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    listener_redis = request_client(settings)
    feed_blocking = blocking_client(settings)
    feed_queue = redis_pool(settings)
    grace = OutageGrace(settings.heartbeat_ttl_s)  # outlives arq's restarts below
    sweeper = Sweeper(listener_redis, Keys(settings.key_prefix), settings, grace)
    feed = WebhookFeed(settings, listener_redis, feed_blocking, delivery_queue(feed_queue, settings))
    listeners = [
        asyncio.create_task(follow_heartbeats(settings, sweeper, stop), name="heartbeat-notifications"),
        asyncio.create_task(feed.run(stop), name="webhook-feed"),
    ]
    backoff = Backoff(settings.reconnect_max_s, base_s=0.1)
    try:
        while not stop.is_set():
            started = time.monotonic()
            try:
                await _run_once(settings, stop, grace)
            except REDIS_FAILURES as exc:
                grace.failed()
                log.warning("worker lost Redis (%s); starting over", exc)
            if time.monotonic() - started > 10:
                backoff.reset()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff.next())
    finally:
        stop.set()
        # The listeners look at `stop` between reads, but the webhook feed's XREAD blocks up to
        # block_s (10 s): what has not ended within a second is cancelled, as a killed worker would
        # be. The feed's unqueued entries are read again by the next reader (a delivery is queued
        # once, by id); a look at a machine cut short is taken again at its next notification or
        # sweep (core.stats says which counters can drift then).
        _, reading = await asyncio.wait(listeners, timeout=LISTENER_GRACE_S)
        for task in reading:
            task.cancel()
        await _ended(listeners)
        for client in (listener_redis, feed_blocking, feed_queue):
            await client.aclose()
    log.info("worker stopped")


async def _run_once(settings: Settings, stop: asyncio.Event, grace: OutageGrace) -> None:
    """The sweeps' arq Worker and the deliveries' one, until `stop` or until one of them fails."""
    workers = [
        (Worker(**options, redis_pool=pool, handle_signals=False), pool)
        for options, pool in (
            (worker_settings(settings, grace), redis_pool(settings)),
            (deliveries_worker_settings(settings), redis_pool(settings)),
        )
    ]
    mains = [asyncio.create_task(worker.async_run()) for worker, _ in workers]
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([*mains, stopping], return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            for worker, _ in workers:
                worker.allow_pick_jobs = False
            running = [t for worker, _ in workers for t in worker.tasks.values() if not t.done()]
            if running:
                await asyncio.wait(running, timeout=STOP_GRACE_S)
    finally:
        stopping.cancel()
        for worker, pool in workers:
            await _close(worker, pool)
        for main in mains:
            if not main.done():
                main.cancel()
        await _ended(mains)  # both may have lost Redis


async def _ended(tasks: list[asyncio.Task[None]]) -> None:
    """Wait for every task and read each one's end, then raise the first failure (a cancel is none)."""
    for end in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(end, BaseException) and not isinstance(end, asyncio.CancelledError):
            raise end


async def _close(worker: Worker, pool: ArqRedis) -> None:
    try:
        await worker.close()  # cancels what still runs, deletes the health key, closes the pool
    except (RedisError, OSError) as exc:
        log.warning("worker did not close cleanly: %s", exc)
        # arq skips on_shutdown when Redis failed first: close what it would have.
        for name in ("deps", "delivery_deps"):
            deps = worker.ctx.pop(name, None)
            if isinstance(deps, tasks.Deps):
                await deps.redis.aclose()
            elif isinstance(deps, tasks.DeliveryDeps):
                await deps.aclose()
        await pool.aclose()
