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
from typing import Any

import msgspec
from arq.connections import ArqRedis, RedisSettings
from arq.cron import cron
from redis.asyncio import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from core.connections import TimedConnection
from core.errors import SettingsError
from core.settings import Settings
from worker import tasks

KEEP_CRON_RESULT_S = 300
JOB_TIMEOUT_S = 120


def queue_name(settings: Settings) -> str:
    return f"{settings.key_prefix}:worker"


def health_check_key(settings: Settings) -> str:
    return f"{queue_name(settings)}:health-check"


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
    base = RedisSettings.from_dsn(settings.redis_url)
    return dataclasses.replace(
        base,
        conn_timeout=settings.redis_connect_timeout_s,
        conn_retries=0,
        retry_on_timeout=False,
        retry=Retry(NoBackoff(), 0),
    )


class _ArqRedis(ArqRedis):  # type: ignore[misc]  # arq is untyped for mypy here
    """arq closes its client with redis-py's deprecated close(); route that to aclose()."""

    async def close(self, close_connection_pool: bool | None = None) -> None:
        await self.aclose(close_connection_pool)


def redis_pool(settings: Settings) -> ArqRedis:
    """arq's client with the policy of core.connections: connect and read timeouts, no retries.

    (arq's RedisSettings has no read timeout, so a stalled Redis would hang a worker forever.)
    """
    options: dict[str, Any] = {
        "socket_connect_timeout": settings.redis_connect_timeout_s,
        "socket_timeout": settings.redis_socket_timeout_s,
        "retry": Retry(NoBackoff(), 0),
        "retry_on_timeout": False,
    }
    if settings.redis_url.startswith("redis://"):
        options["connection_class"] = TimedConnection
    pool = ConnectionPool.from_url(settings.redis_url, **options)
    client = _ArqRedis(
        pool,
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=queue_name(settings),
    )
    client.auto_close_connection_pool = True  # the pool is this client's alone
    return client


def worker_settings(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of arq's Worker (also usable as `arq`'s WorkerSettings mapping)."""

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["deps"] = tasks.Deps.create(settings)

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
