"""arq's worker configuration, built from Settings: the only module that knows arq's options.

One queue for the whole deployment (`<prefix>:worker`), however many workers run. Cron jobs are
named after the key prefix, so arq's per-run job id (`<name>:<run time ms>`) is the same on
every worker: the first enqueue wins and the others find the job (or its kept result) and skip
it. The result is kept long enough that a late worker cannot enqueue the same run again; a run
that still happens twice (a worker paused for minutes) changes nothing, as every sweep is a
compare-and-set.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from arq.connections import ArqRedis, RedisSettings
from arq.cron import cron
from arq.worker import func
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from core.connections import request_client
from core.deliveries import Delivery, max_attempts
from core.errors import SettingsError
from core.outages import OutageGrace
from core.settings import Settings
from worker import tasks

KEEP_CRON_RESULT_S = 300
JOB_TIMEOUT_S = 120
DELIVER = "deliver_webhook"
# arq counts a try that a dying worker left unfinished as well; these many such are allowed.
CRASH_TRIES = 3
DELIVERY_TIMEOUT_MARGIN_S = 10.0  # beyond webhook_timeout_s: the attempt's own Redis reads and writes


def queue_name(settings: Settings) -> str:
    return f"{settings.key_prefix}:worker"


def health_check_key(settings: Settings) -> str:
    return f"{queue_name(settings)}:health-check"


def health_check_keys(settings: Settings) -> dict[str, str]:
    """The health key of each arq Worker a worker process runs, by what that Worker does."""
    return {"sweeps": health_check_key(settings), "webhook deliveries": deliveries_health_check_key(settings)}


def deliveries_queue_name(settings: Settings) -> str:
    """Webhook deliveries have a queue (and arq Worker) of their own, so that receivers that are
    slow or down never hold up the sweeps."""
    return f"{queue_name(settings)}:webhooks"


def deliveries_health_check_key(settings: Settings) -> str:
    return f"{deliveries_queue_name(settings)}:health-check"


def schedule(interval_s: float, name: str = "interval") -> dict[str, Any]:
    """arq cron options that fire every `interval_s` seconds on the wall clock.

    arq's cron matches sets of seconds, minutes and hours, so the interval must be a whole
    number of seconds below a minute, of minutes below an hour, or of hours up to a day. An
    interval that does not divide its unit evenly leaves one shorter gap at the turn.
    """
    n = round(interval_s)
    if n < 1 or abs(interval_s - n) > 1e-9:
        raise SettingsError(f"{name} must be a whole number of seconds, at least 1 (got {interval_s})")
    if n < 60:
        return {"second": set(range(0, 60, n))}
    if n < 3600 and n % 60 == 0:
        return {"second": 0, "minute": set(range(0, 60, n // 60))}
    if n <= 86400 and n % 3600 == 0:
        return {"second": 0, "minute": 0, "hour": set(range(0, 24, n // 3600))}
    raise SettingsError(f"{name} must be whole seconds below 60, whole minutes below an hour, or whole hours")


def _enc_hook(obj: Any) -> Any:
    # arq stores a failed job's exception as its result; keep it as text, never pickle.
    if isinstance(obj, BaseException):
        return f"{type(obj).__name__}: {obj}"
    if isinstance(obj, datetime.datetime | datetime.timedelta):
        return str(obj)
    raise NotImplementedError(f"cannot serialize {type(obj).__name__}")


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)


def serialize(obj: Any) -> bytes:
    return _encoder.encode(obj)


def deserialize(data: bytes) -> Any:
    return msgspec.json.decode(data)


def redis_settings(settings: Settings) -> RedisSettings:
    """For arq's own tools (e.g. `arq --check`); the worker itself uses `redis_pool`."""
    base = RedisSettings.from_dsn(arq_settings(settings).redis_url)
    return dataclasses.replace(
        base,
        conn_timeout=settings.redis_connect_timeout_s,
        conn_retries=0,
        retry_on_timeout=False,
        retry=Retry(NoBackoff(), 0),
    )


class _ArqRedis(ArqRedis):  # type: ignore[misc]  # arq is untyped for mypy here
    """arq's client on core's connection pool; closing it closes that pool's owner too."""

    owner: Redis | None = None

    async def close(self, close_connection_pool: bool | None = None) -> None:  # arq's name for it
        await self.aclose(close_connection_pool)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.owner is not None:
            await self.owner.aclose()  # the pool, and with Sentinel the sentinels' connections


def arq_settings(settings: Settings) -> Settings:
    """The settings of arq's Redis: WORKER_REDIS_URL when set (a plain Redis: arq's keys carry
    no hash tag, so it cannot run on a Cluster), else REDIS_URL as configured (Sentinel too)."""
    if not settings.worker_redis_url:
        return settings
    plain = {"redis_sentinels": (), "redis_cluster": False, "redis_cluster_nodes": ()}
    return msgspec.structs.replace(settings, redis_url=settings.worker_redis_url, **plain)


def redis_pool(settings: Settings) -> ArqRedis:
    """arq's client with the policy of core.connections: connect and read timeouts, no retries.

    (arq's RedisSettings has no read timeout, so a stalled Redis would hang a worker forever.)
    """
    owner = request_client(arq_settings(settings))
    client = _ArqRedis(
        owner.connection_pool,
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=queue_name(settings),
    )
    client.owner = owner
    return client


def worker_settings(settings: Settings, grace: OutageGrace | None = None) -> dict[str, Any]:
    """Keyword arguments of arq's Worker (also usable as `arq`'s WorkerSettings mapping)."""
    shared_grace = grace or OutageGrace(settings.heartbeat_ttl_s)

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["deps"] = tasks.Deps.create(settings, shared_grace)

    async def shutdown(ctx: dict[str, Any]) -> None:
        deps = ctx.pop("deps", None)
        if deps is not None:
            await deps.redis.aclose()

    if settings.worker_health_check_interval_s <= 0:
        raise SettingsError("worker_health_check_interval_s must be positive")
    prefix = settings.key_prefix
    every = {"unique": True, "keep_result": KEEP_CRON_RESULT_S, "max_tries": 1, "timeout": JOB_TIMEOUT_S}
    sweep_at = schedule(settings.sweep_interval_s, "sweep_interval_s")
    trim_at = schedule(settings.trim_interval_s, "trim_interval_s")
    return {
        "functions": [],
        "cron_jobs": [
            cron(tasks.sweep, name=f"{prefix}:sweep", **every, **sweep_at),
            cron(tasks.trim, name=f"{prefix}:trim", **every, **trim_at),
        ],
        "queue_name": queue_name(settings),
        "health_check_key": health_check_key(settings),
        "health_check_interval": settings.worker_health_check_interval_s,
        "redis_settings": redis_settings(settings),
        "job_serializer": serialize,
        "job_deserializer": deserialize,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "max_tries": 1,
        "retry_jobs": False,
        "job_timeout": JOB_TIMEOUT_S,
        "keep_result": KEEP_CRON_RESULT_S,
        "timezone": datetime.UTC,
        "log_results": False,
    }


def deliveries_worker_settings(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of the arq Worker that runs webhook deliveries (core.deliveries)."""

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["delivery_deps"] = tasks.DeliveryDeps.create(settings)

    async def shutdown(ctx: dict[str, Any]) -> None:
        deps = ctx.pop("delivery_deps", None)
        if deps is not None:
            await deps.aclose()

    name = deliveries_queue_name(settings)
    deliver = func(
        tasks.deliver,
        name=DELIVER,
        max_tries=max_attempts(settings) + CRASH_TRIES,
        timeout=settings.webhook_timeout_s + DELIVERY_TIMEOUT_MARGIN_S,
        # The queue drops a delivery id it still knows: a reader that reads an event again (after
        # a restart midway) queues nothing twice while the result is kept.
        keep_result=settings.webhook_retry_window_s,
    )
    return {
        "functions": [deliver],
        "queue_name": name,
        "health_check_key": deliveries_health_check_key(settings),
        "health_check_interval": settings.worker_health_check_interval_s,
        "redis_settings": redis_settings(settings),
        "job_serializer": serialize,
        "job_deserializer": deserialize,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "max_jobs": settings.webhook_max_in_flight,
        "retry_jobs": True,  # arq's Retry is how the next attempt is scheduled
        "keep_result": settings.webhook_retry_window_s,
        "timezone": datetime.UTC,
        "log_results": False,
    }


def delivery_queue(pool: ArqRedis, settings: Settings) -> Callable[[Delivery], Awaitable[bool]]:
    """The webhook feed's way onto the deliveries queue: the delivery id is the job id, so the same
    delivery is queued once; it expires when no attempt could start any more."""
    name = deliveries_queue_name(settings)
    expires_s = settings.webhook_retry_window_s + settings.webhook_retry_max_s

    async def enqueue(delivery: Delivery) -> bool:
        job = await pool.enqueue_job(
            DELIVER,
            msgspec.to_builtins(delivery),
            _job_id=f"{settings.key_prefix}:webhook:{delivery.id}",
            _queue_name=name,
            _expires=expires_s,
        )
        return job is not None

    return enqueue
