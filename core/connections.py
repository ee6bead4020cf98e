"""Redis clients with the timeouts, TLS and retry policy every machine-hub process must use.

redis-py re-sends a command after a connection error when retries are on, which executed a
single LPUSH twice in a measured stall (docs/design.md, "No blind retries"). Every client here
has retries off; callers retry only what is safe to repeat, after a `Backoff` pause. A blocking
client's socket timeout is longer than its longest block, so a quiet mailbox reads as "nothing",
not as a dead server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

from redis import exceptions
from redis.asyncio import Connection, Redis, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.connection import HiredisRespSerializer

from core.settings import Settings

BLOCKING_MARGIN_S = 5.0
BACKOFF_BASE_S = 0.05
# What redis-py raises: its cluster client raises RedisClusterException, which is no RedisError,
# when no node answers it (the whole cluster down, or cut off). A Redis out of reach may also
# surface as a plain OSError.
REDIS_ERRORS: tuple[type[Exception], ...] = (exceptions.RedisError, exceptions.RedisClusterException)
REDIS_FAILURES: tuple[type[Exception], ...] = (*REDIS_ERRORS, OSError)
_PACKER = HiredisRespSerializer()  # redis-py's synchronous client's packer: hiredis, in C


class _Writes:
    """How machine-hub's connections write (a mixin of redis-py's connection classes; a Cluster's
    connections are redis-py's own).

    redis-py bounds every write with asyncio.wait_for, which costs a new task per command on
    Python 3.11; asyncio.timeout bounds it as well without one. Reads keep redis-py's timeout.
    Commands are packed by hiredis, in C, as redis-py's synchronous client does (its asyncio
    client packs in Python): a page of 100 machines (400 commands) took a hub a fifth less time.
    """

    socket_timeout: float | None

    def pack_command(self, *args: Any) -> list[bytes]:
        packed: list[bytes] = _PACKER.pack(*args)
        return packed

    async def send_packed_command(self, command: bytes | str | Iterable[bytes], check_health: bool = True) -> None:
        timeout, self.socket_timeout = self.socket_timeout, None
        try:
            async with asyncio.timeout(timeout):
                await super().send_packed_command(command, check_health)  # type: ignore[misc]
        except TimeoutError:
            raise exceptions.TimeoutError("Timeout writing to socket") from None
        finally:
            self.socket_timeout = timeout


class TimedConnection(_Writes, Connection):  # type: ignore[misc]  # redis-py is untyped for mypy here
    pass


class TimedSSLConnection(_Writes, SSLConnection):  # type: ignore[misc]
    pass


class TimedUnixConnection(_Writes, UnixDomainSocketConnection):  # type: ignore[misc]
    pass


CONNECTION_CLASSES = {"redis": TimedConnection, "rediss": TimedSSLConnection, "unix": TimedUnixConnection}


class Backoff:
    """Pauses between reconnect attempts: equal jitter, so a fleet that lost Redis together does
    not come back in lockstep, capped at `reconnect_max_s`."""

    def __init__(self, cap_s: float, base_s: float = BACKOFF_BASE_S) -> None:
        self._backoff = EqualJitterBackoff(cap=cap_s, base=base_s)
        self.failures = 0

    def next(self) -> float:
        self.failures += 1
        return float(self._backoff.compute(self.failures))

    def reset(self) -> None:
        self.failures = 0


def client_options(settings: Settings, socket_timeout: float) -> dict[str, Any]:
    """Keyword arguments of every redis-py client (and pool) of machine-hub."""
    options: dict[str, Any] = {
        "socket_connect_timeout": settings.redis_connect_timeout_s,
        "socket_timeout": socket_timeout,
        "retry": Retry(NoBackoff(), 0),
        "retry_on_timeout": False,
        # Redis 7.0 does not know CLIENT SETINFO: two wasted round trips on every new connection.
        "lib_name": None,
        "lib_version": None,
    }
    if settings.redis_url.startswith("rediss://"):
        options["ssl_cert_reqs"] = "required"
        if settings.redis_ca:
            options["ssl_ca_certs"] = settings.redis_ca
    return options


def _client(settings: Settings, socket_timeout: float, max_connections: int | None) -> Redis:
    options = client_options(settings, socket_timeout)
    if settings.redis_sentinels or settings.redis_cluster:
        from core import topology  # it builds on this module

        build = topology.sentinel_client if settings.redis_sentinels else topology.cluster_client
        return build(settings, options, max_connections)
    client = Redis.from_url(settings.redis_url, max_connections=max_connections, **options)
    # from_url picks redis-py's class for the URL's scheme over any passed in: ours replaces it
    # before the first connection is made.
    client.connection_pool.connection_class = CONNECTION_CLASSES[settings.redis_url.partition("://")[0].lower()]
    return client


def request_client(settings: Settings, *, max_connections: int | None = None) -> Redis:
    """For short commands: fails within `redis_socket_timeout_s` when Redis stalls."""
    return _client(settings, settings.redis_socket_timeout_s, max_connections)


def blocking_client(settings: Settings, *, max_connections: int = 1) -> Redis:
    """For tasks that block up to `block_s` per call (mailbox, inbox or event-stream reads),
    one connection per concurrent reader."""
    return _client(settings, settings.block_s + BLOCKING_MARGIN_S, max_connections)


async def drop_idle_connections(client: Redis) -> None:
    """Close the connections `client` holds but does not use; it opens new ones when next needed.

    A Cluster client has no `connection_pool`, only a set of connections per node: those are all
    closed, so call this only while the client runs no command. A close that fails or times out
    (redis-py waits `redis_connect_timeout_s` for the peer's goodbye; a loaded box after a Redis
    restart took longer) is not an error: the socket is closed already, and every other connection
    was closed too.
    """
    pool = getattr(client, "connection_pool", None)
    with contextlib.suppress(*REDIS_FAILURES):
        if pool is not None:
            await pool.disconnect(inuse_connections=False)
            return
        for node in client.get_nodes():
            with contextlib.suppress(*REDIS_FAILURES):
                await node.disconnect()


def refused_credentials(exc: BaseException) -> bool:
    """Redis turned this client's user or password away (removed, rotated or disabled)."""
    if isinstance(exc, exceptions.AuthenticationError):
        return True
    text = str(exc)
    return text.startswith(("WRONGPASS", "NOAUTH", "invalid username-password")) or "user is disabled" in text
