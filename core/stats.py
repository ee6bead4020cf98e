"""Fleet counters kept as things change, so that a metrics scrape is one read of one hash.

Only trusted processes write them (hubs, the worker, the admin commands), each right after the
compare-and-set that made the change, so a change counted is a change that happened once. A
counter can drift when the process dies between the two writes, or when a failover loses the last
writes; the sweep's own transitions bring `online` back in line as machines are seen again.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from core.keys import Keys

ONLINE = "machines_online"
REGISTERED = "machines_registered"
DRAINED = "machines_drained"  # changed only by the script call that flipped the flag (core.registry)
FINISHED = "jobs_finished"  # followed by ":<state>"
DELIVERIES = "webhook_deliveries"  # followed by ":succeeded" or ":failed" (final outcomes only)


def field(ns: str, name: str) -> str:
    # A space cannot occur in a namespace name, so the field splits back unambiguously.
    return f"{ns} {name}"


def add(pipe: Any, keys: Keys, ns: str, name: str, by: int = 1) -> None:
    """Queue a change of one counter on a pipeline (or run it on a client)."""
    pipe.hincrby(keys.stats(), field(ns, name), by)


async def read(redis: Redis, keys: Keys) -> dict[str, dict[str, int]]:
    """namespace -> counter name -> value, counters below zero (drift) read as zero."""
    out: dict[str, dict[str, int]] = {}
    for raw_field, raw_value in (await redis.hgetall(keys.stats())).items():
        text = raw_field.decode() if isinstance(raw_field, bytes) else str(raw_field)
        ns, sep, name = text.partition(" ")
        if sep:
            out.setdefault(ns, {})[name] = max(0, int(raw_value))
    return out
