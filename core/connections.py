"""Redis clients with the timeouts and retry policy every machine-hub process must use.

redis-py re-sends a command after a connection error when retries are on, which executed a
single LPUSH twice in a measured stall (reference/reliability.md, finding 3). Every client here
has retries off; callers retry only what is safe to repeat. A blocking client's socket timeout
is longer than its longest block, so a quiet mailbox reads as "nothing", not as a dead server.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from core.settings import Settings

BLOCKING_MARGIN_S = 5.0


def request_client(settings: Settings, *, max_connections: int | None = None) -> Redis:
    """For short commands: fails within `redis_socket_timeout_s` when Redis stalls."""
    return Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        socket_timeout=settings.redis_socket_timeout_s,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        max_connections=max_connections,
    )


def blocking_client(settings: Settings) -> Redis:
    """For one task that blocks up to `block_s` per call (mailbox or inbox pops)."""
    return Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        socket_timeout=settings.block_s + BLOCKING_MARGIN_S,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        max_connections=1,
    )
