"""The arq job functions: thin calls into core.sweeps with the worker's dependencies."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from redis.asyncio import Redis

from core import sweeps
from core.connections import request_client
from core.keys import Keys
from core.settings import Settings


@dataclass(frozen=True, slots=True)
class Deps:
    """What every task needs, built once per worker process (arq's on_startup)."""

    settings: Settings
    redis: Redis
    keys: Keys

    @classmethod
    def create(cls, settings: Settings) -> Deps:
        return cls(settings, request_client(settings), Keys(settings.key_prefix))


def deps(ctx: dict[str, Any]) -> Deps:
    found: Deps = ctx["deps"]
    return found


async def sweep(ctx: dict[str, Any]) -> dict[str, int]:
    """Machines offline/online (failing the queued jobs of gone ones), then lost running jobs."""
    d = deps(ctx)
    machines = await sweeps.sweep_machines(d.redis, d.keys, d.settings)
    lost = await sweeps.sweep_jobs(d.redis, d.keys, d.settings)
    return {**asdict(machines), "unknown": lost}


async def trim(ctx: dict[str, Any]) -> dict[str, int]:
    d = deps(ctx)
    return asdict(await sweeps.trim_history(d.redis, d.keys, d.settings))
