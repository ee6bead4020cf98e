"""Run the background worker, or check that one is alive: the whole interface to arq.

`run(settings)` blocks until SIGTERM or SIGINT: it stops taking jobs, lets a running sweep finish
(up to STOP_GRACE_S), removes its health key and returns. When Redis fails under it, it starts
over after a pause, as the agent does. `check(settings)` is the container health check: 0 while
some worker refreshed the queue's health key within `worker_health_check_interval_s` (+1 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

import uvloop
from arq.worker import Worker
from redis.exceptions import RedisError

from core.connections import request_client
from core.settings import Settings
from worker.settings import health_check_key, redis_pool, worker_settings

log = logging.getLogger(__name__)
STOP_GRACE_S = 10.0


def run(settings: Settings) -> None:
    """Run the worker in the foreground until SIGTERM or SIGINT."""
    worker_settings(settings)  # a bad interval fails here, before anything starts
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(settings))


def check(settings: Settings) -> int:
    """0 when a worker of this deployment is alive, else 1 (for a container health check)."""
    return asyncio.run(_check(settings))


async def _check(settings: Settings) -> int:
    redis = request_client(settings)
    try:
        health = await redis.get(health_check_key(settings))
    except (RedisError, OSError) as exc:
        log.warning("health check failed: cannot reach Redis (%s)", exc)
        return 1
    finally:
        await redis.aclose()
    if health is None:
        log.warning("health check failed: no worker refreshed %s", health_check_key(settings))
        return 1
    log.info("health check passed: %s", health.decode(errors="replace"))
    return 0


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run the worker until `stop` is set (by default: on SIGTERM or SIGINT)."""
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    backoff = 0.1
    while not stop.is_set():
        started = time.monotonic()
        try:
            await _run_once(settings, stop)
        except (RedisError, OSError) as exc:
            log.warning("worker lost Redis (%s); starting over", exc)
        if time.monotonic() - started > 10:
            backoff = 0.1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), backoff)
        backoff = min(backoff * 2, settings.reconnect_max_s)
    log.info("worker stopped")


async def _run_once(settings: Settings, stop: asyncio.Event) -> None:
    pool = redis_pool(settings)
    worker = Worker(**worker_settings(settings), redis_pool=pool, handle_signals=False)
    main = asyncio.create_task(worker.async_run())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([main, stopping], return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            worker.allow_pick_jobs = False
            running = [t for t in worker.tasks.values() if not t.done()]
            if running:
                await asyncio.wait(running, timeout=STOP_GRACE_S)
    finally:
        stopping.cancel()
        try:
            await worker.close()  # cancels what still runs, deletes the health key, closes the pool
        except (RedisError, OSError) as exc:
            log.warning("worker did not close cleanly: %s", exc)
            deps = worker.ctx.pop("deps", None)  # arq skips on_shutdown when Redis failed first
            if deps is not None:
                await deps.redis.aclose()
            await pool.aclose()
        if not main.done():
            main.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await main  # re-raises what ended the worker, if not a stop
