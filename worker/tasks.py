"""The arq job functions: thin calls into core.sweeps and core.deliveries with the worker's dependencies."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import httpx2
import msgspec
from arq.worker import Retry
from redis.asyncio import Redis

from core.connections import REDIS_FAILURES, request_client
from core.deliveries import Delivery, Sender, http_client
from core.keys import Keys
from core.outages import OutageGrace
from core.settings import Settings
from core.sweeps import Sweeper


@dataclass(frozen=True, slots=True)
class Deps:
    """What every task needs, built once per worker process (arq's on_startup)."""

    settings: Settings
    redis: Redis
    sweeper: Sweeper

    @classmethod
    def create(cls, settings: Settings, grace: OutageGrace) -> Deps:
        redis = request_client(settings)
        return cls(settings, redis, Sweeper(redis, Keys(settings.key_prefix), settings, grace))


def deps(ctx: dict[str, Any]) -> Deps:
    found: Deps = ctx["deps"]
    return found


async def sweep(ctx: dict[str, Any]) -> dict[str, int]:
    """The machines that are due: offline ones that came back, online ones whose heartbeat is gone
    (failing what waits for them and settling what they left running)."""
    result = await deps(ctx).sweeper.sweep()
    return {k: int(v) for k, v in asdict(result).items()}


async def trim(ctx: dict[str, Any]) -> dict[str, int]:
    jobs, events = await deps(ctx).sweeper.trim()
    return {"jobs": jobs, "events": events}


@dataclass(frozen=True, slots=True)
class DeliveryDeps:
    """What webhook deliveries need, built once per worker process (the deliveries queue's on_startup)."""

    settings: Settings
    redis: Redis
    http: httpx2.AsyncClient
    sender: Sender

    @classmethod
    def create(cls, settings: Settings) -> DeliveryDeps:
        redis = request_client(settings)
        http = http_client(settings)
        return cls(settings, redis, http, Sender(redis, Keys(settings.key_prefix), settings, http))

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.redis.aclose()


async def deliver(ctx: dict[str, Any], delivery: dict[str, Any]) -> str:
    """One attempt of a webhook delivery; arq runs the next one (Retry) when it is due."""
    found: DeliveryDeps = ctx["delivery_deps"]
    try:
        delay = await found.sender.attempt(msgspec.convert(delivery, Delivery), attempt=int(ctx["job_try"]))
    except REDIS_FAILURES as exc:
        # The attempt may have reached the receiver before Redis failed: sent again, it is a
        # repeat the receiver drops by its delivery id (at least once, never lost to a blip).
        raise Retry(defer=found.settings.webhook_retry_base_s) from exc
    if delay is not None:
        raise Retry(defer=delay)
    return "done"
