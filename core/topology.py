"""Clients for a Redis behind Sentinel, or a Redis Cluster, with core.connections' rules.

Sentinel: the primary is found by asking every sentinel and taking the answer with the highest
config-epoch (a lagging sentinel still names the old primary), and a pool looks again at most
every `SENTINEL_RECHECK_S` when it hands out a connection, dropping connections to a primary
that is no longer one, so a switchover or a hung primary is left within seconds, not when the
old primary is finally demoted (docs/design.md, "Failover"). Cluster: no command is ever sent
twice (redis-py's cluster retries are off), and pipelines make exactly one attempt, which
redis-py 5.3.1 cannot do by itself (with zero retries its pipelines always fail).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.exceptions import RedisClusterException

from core.connections import REDIS_FAILURES, TimedConnection
from core.errors import SettingsError
from core.settings import Settings

SENTINEL_RECHECK_S = 2.0
SENTINEL_TIMEOUT_S = 0.5


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"{text!r} is not host:port")
    return host.strip("[]"), int(port)


def _credentials(settings: Settings) -> dict[str, Any]:
    parts = urlsplit(settings.redis_url)
    db = parts.path.strip("/")
    out: dict[str, Any] = {"db": int(db) if db.isdigit() else 0}
    if parts.username:
        out["username"] = unquote(parts.username)
    if parts.password:
        out["password"] = unquote(parts.password)
    return out


def _tls(settings: Settings) -> dict[str, Any]:
    if not settings.redis_url.startswith("rediss://"):
        return {}
    return {
        "ssl": True,
        "ssl_cert_reqs": "required",
        **({"ssl_ca_certs": settings.redis_ca} if settings.redis_ca else {}),
    }


class TimedSentinelConnection(SentinelManagedConnection, TimedConnection):  # type: ignore[misc]
    """Sentinel discovery when it connects; core's task-free write timeout when it sends."""


class EpochSentinel(Sentinel):  # type: ignore[misc]
    async def discover_master(self, service_name: str) -> tuple[str, int]:
        answers = await asyncio.gather(
            *(s.sentinel_master(service_name) for s in self.sentinels), return_exceptions=True
        )
        good = [a for a in answers if isinstance(a, dict) and self.check_master_state(a, service_name)]
        if not good:
            raise MasterNotFoundError(f"No master found for {service_name!r}")
        best = max(good, key=lambda a: int(a.get("config-epoch", 0)))
        return str(best["ip"]), int(best["port"])


class FollowingPool(SentinelConnectionPool):  # type: ignore[misc]
    """Hands out no connection to a former primary: it asks the sentinels again now and then."""

    _checked_at = 0.0

    async def ensure_connection(self, connection: Any) -> None:
        if self.is_master and time.monotonic() - self._checked_at > SENTINEL_RECHECK_S:
            self._checked_at = time.monotonic()
            address = await self.get_master_address()
            if connection.is_connected and (connection.host, connection.port) != tuple(address):
                await connection.disconnect()
        await super().ensure_connection(connection)


class SentinelClient(Redis):  # type: ignore[misc]
    """A client of the primary that closes its own sentinel connections with itself."""

    sentinel: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinel is not None:
            for client in self.sentinel.sentinels:
                await client.aclose()


def sentinel_client(settings: Settings, options: dict[str, Any], max_connections: int | None) -> Redis:
    """The current primary's client: `options` are core.connections' (timeouts, no retries)."""
    sentinels = [parse_address(a) for a in settings.redis_sentinels]
    shared = {k: options[k] for k in ("retry", "retry_on_timeout")} | _tls(settings)
    sentinel = EpochSentinel(
        sentinels,
        sentinel_kwargs={"socket_timeout": SENTINEL_TIMEOUT_S, "socket_connect_timeout": SENTINEL_TIMEOUT_S, **shared},
        socket_timeout=options["socket_timeout"],
        socket_connect_timeout=options["socket_connect_timeout"],
        lib_name=None,
        lib_version=None,
        **shared,
        **_credentials(settings),
    )
    tls = settings.redis_url.startswith("rediss://")
    client: SentinelClient = sentinel.master_for(
        settings.redis_master,
        redis_class=SentinelClient,
        connection_pool_class=FollowingPool,
        connection_class=SentinelManagedSSLConnection if tls else TimedSentinelConnection,
        max_connections=max_connections,
    )
    client.sentinel = sentinel
    return client


class OneShotPipeline(ClusterPipeline):  # type: ignore[misc]
    """A cluster pipeline sent once: a failure reaches the caller, who knows what is safe to repeat."""

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        stack: list[Any] = getattr(self, "_command_stack")  # noqa: B009  # redis-py's, untyped here
        if not stack:
            return []
        try:
            if self._client._initialize:
                await self._client.initialize()
            try:
                result: list[Any] = await self._execute(
                    self._client, stack, raise_on_error=raise_on_error, allow_redirections=allow_redirections
                )
                return result
            except BaseException as exc:
                if type(exc) in self.__class__.ERRORS_ALLOW_RETRY:
                    await self._client.aclose()  # the topology is read again by the next command
                raise
        finally:
            setattr(self, "_command_stack", [])  # noqa: B010


class Cluster(RedisCluster):  # type: ignore[misc]
    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> OneShotPipeline:
        if transaction or shard_hint:
            raise RedisClusterException("transactions do not span a cluster: use one script per hash tag")
        return OneShotPipeline(self)


def cluster_seeds(settings: Settings) -> list[tuple[str, int]]:
    """The nodes a process finds a Cluster through, in order: REDIS_URL's, then
    MACHINE_HUB_REDIS_CLUSTER_NODES, so one node down at start does not keep a process out."""
    parts = urlsplit(settings.redis_url)
    first = (parts.hostname or "127.0.0.1", parts.port or 6379)
    return [first, *(a for a in map(parse_address, settings.redis_cluster_nodes) if a != first)]


def cluster_client(settings: Settings, options: dict[str, Any], max_connections: int | None) -> Redis:
    credentials = _credentials(settings)
    if credentials.pop("db"):
        raise SettingsError("a Redis Cluster has only database 0: REDIS_URL must end in /0")
    return Cluster(
        startup_nodes=[ClusterNode(host, port) for host, port in cluster_seeds(settings)],
        socket_timeout=options["socket_timeout"],
        socket_connect_timeout=options["socket_connect_timeout"],
        retry=options["retry"],
        cluster_error_retry_attempts=0,
        max_connections=max_connections or 2**31,
        lib_name=None,
        lib_version=None,
        **credentials,
        **_tls(settings),
    )


def node_client(settings: Settings, host: str, port: int, socket_timeout: float) -> Redis:
    """A plain client of one data node with `settings`' credentials (no redirects, no discovery)."""
    options = {"socket_timeout": socket_timeout, "socket_connect_timeout": settings.redis_connect_timeout_s}
    options |= {"lib_name": None, "lib_version": None} | _credentials(settings) | _tls(settings)
    if settings.redis_cluster:
        options.pop("db", None)
    return Redis(host=host, port=port, **options)


async def cluster_addresses(settings: Settings) -> list[tuple[str, int]]:
    """Every node of the cluster that is not failed, replicas included, from CLUSTER NODES (CLUSTER
    SLOTS, and so redis-py, leaves out a replica that has not replicated anything yet), asked of
    the first seed that answers (a read: asking the next one after a failure repeats no write)."""
    *others, last = cluster_seeds(settings)
    for host, port in others:
        with contextlib.suppress(*REDIS_FAILURES):
            return await _ask_nodes(settings, host, port)
    return await _ask_nodes(settings, *last)


async def _ask_nodes(settings: Settings, host: str, port: int) -> list[tuple[str, int]]:
    seed = node_client(settings, host, port, settings.redis_socket_timeout_s)
    try:
        return _cluster_nodes(await seed.execute_command("CLUSTER", "NODES"))
    finally:
        await seed.aclose()


async def data_nodes(settings: Settings, admin: Redis) -> list[Redis]:
    """A client of every data node, primaries and replicas, with `admin`'s credentials: Redis
    replicates neither ACL users nor configuration, so an operator's change must reach each."""
    if settings.redis_cluster:
        addresses = await cluster_addresses(settings)
    else:
        sentinel: Sentinel = admin.sentinel
        primary = await sentinel.discover_master(settings.redis_master)
        replicas = await sentinel.discover_slaves(settings.redis_master)
        addresses = [tuple(primary), *(tuple(r) for r in replicas)]
    return [node_client(settings, host, port, 5.0) for host, port in addresses]


def _cluster_nodes(reply: Any) -> list[tuple[str, int]]:
    """Every node CLUSTER NODES names that is not failed, the node asked first (redis-py parses the
    reply into a dict)."""
    if isinstance(reply, bytes | str):
        text = reply.decode() if isinstance(reply, bytes) else reply
        rows = [(line.split()[1], line.split()[2]) for line in text.splitlines() if line.strip()]
    else:
        rows = [(address, str(node.get("flags", ""))) for address, node in dict(reply).items()]
    out = []
    for address, flags in sorted(rows, key=lambda row: "myself" not in row[1]):  # the asked node first
        if "fail" in flags or "noaddr" in flags:
            continue
        host, _, port = address.partition("@")[0].rpartition(":")
        out.append((host, int(port)))
    return out
