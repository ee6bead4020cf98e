"""redis-py asyncio clients for the topologies, as machine-hub's processes must build them: retries
off (a command that may have run is never sent twice), connect and read timeouts on every socket.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from redis import exceptions
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from machine_hub.redis_cluster import ClusterTopology
from machine_hub.redis_sentinel import SentinelTopology

T = TypeVar("T")

TIMEOUTS: dict[str, Any] = {"socket_timeout": 1.0, "socket_connect_timeout": 0.5}


def no_retry() -> dict[str, Any]:
    return {"retry": Retry(NoBackoff(), 0), "retry_on_timeout": False}


@asynccontextmanager
async def primary_via_sentinel(topology: SentinelTopology, **login: Any) -> AsyncIterator[Redis]:
    """The Sentinel-discovered primary; `login` is username= and password= for the data nodes."""
    sentinel = Sentinel(
        topology.sentinel_addresses, sentinel_kwargs={**TIMEOUTS, **no_retry()}, **TIMEOUTS, **no_retry(), **login
    )
    primary = sentinel.master_for(topology.master_name)
    try:
        yield primary
    finally:
        await primary.aclose()
        for client in sentinel.sentinels:  # Sentinel itself has no aclose()
            await client.aclose()


@asynccontextmanager
async def cluster_client(topology: ClusterTopology, **login: Any) -> AsyncIterator[RedisCluster]:
    """A cluster client that retries nothing: not the connection, not the command after an error."""
    client = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in topology.startup_nodes],
        retry=Retry(NoBackoff(), 0),
        cluster_error_retry_attempts=0,
        **TIMEOUTS,
        **login,
    )
    try:
        await client.initialize()
        yield client
    finally:
        await client.aclose()


async def until_ok(operation: Callable[[], Awaitable[T]], what: str, timeout_s: float = 10.0) -> T:
    """`operation`'s result once it stops failing with connection errors (fine for idempotent writes)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await operation()
        except (exceptions.ConnectionError, exceptions.TimeoutError, exceptions.ClusterDownError) as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s waiting until {what}: {e!r}") from e
            await asyncio.sleep(0.05)
