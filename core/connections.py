"""Redis clients with the timeouts and retry policy every machine-hub process must use.

redis-py re-sends a command after a connection error when retries are on, which executed a
single LPUSH twice in a measured stall (reference/reliability.md, finding 3). Every client here
has retries off; callers retry only what is safe to repeat. A blocking client's socket timeout
is longer than its longest block, so a quiet mailbox reads as "nothing", not as a dead server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from redis import exceptions
from redis.asyncio import Connection, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from core.settings import Settings

BLOCKING_MARGIN_S = 5.0


class TimedConnection(Connection):  # type: ignore[misc]  # redis-py is untyped for mypy here
    """redis-py bounds every write with asyncio.wait_for, which costs a new task per command on
    Python 3.11; asyncio.timeout bounds it as well without one. Reads keep redis-py's timeout."""

    socket_timeout: float | None

    async def send_packed_command(self, command: bytes | str | Iterable[bytes], check_health: bool = True) -> None:
        timeout, self.socket_timeout = self.socket_timeout, None
        try:
            async with asyncio.timeout(timeout):
                await super().send_packed_command(command, check_health)
        except TimeoutError:
            raise exceptions.TimeoutError("Timeout writing to socket") from None
        finally:
            self.socket_timeout = timeout


def _client(settings: Settings, socket_timeout: float, max_connections: int | None) -> Redis:
    options: dict[str, Any] = {
        "socket_connect_timeout": settings.redis_connect_timeout_s,
        "socket_timeout": socket_timeout,
        "retry": Retry(NoBackoff(), 0),
        "retry_on_timeout": False,
        "max_connections": max_connections,
    }
    if settings.redis_url.startswith("redis://"):  # TLS and unix sockets keep their own classes
        options["connection_class"] = TimedConnection
    return Redis.from_url(settings.redis_url, **options)


def request_client(settings: Settings, *, max_connections: int | None = None) -> Redis:
    """For short commands: fails within `redis_socket_timeout_s` when Redis stalls."""
    return _client(settings, settings.redis_socket_timeout_s, max_connections)


def blocking_client(settings: Settings, *, max_connections: int = 1) -> Redis:
    """For tasks that block up to `block_s` per call (mailbox, inbox or event-stream reads),
    one connection per concurrent reader."""
    return _client(settings, settings.block_s + BLOCKING_MARGIN_S, max_connections)
