"""A Sentinel deployment on loopback: one primary, one replica and three sentinels, each a redis-server.

For tests of processes that find the primary through Sentinel and must follow a failover. The
timings are short so a failover completes in a few seconds: the primary counts as down after
`down_after_ms` without a reply, and a failover that stalls is retried after twice
`failover_timeout_ms`. Every wait polls with a deadline.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from machine_hub.redis_server import (
    REPLICATION_ARGS,
    Credentials,
    RedisServer,
    auth_args,
    config_value,
    kill_all,
    poll_until,
)

PROBE_KEY = "topology:probe"  # written (and expiring at once) to prove a new primary takes writes


class SentinelTopology:
    """`nodes[0]` starts as the primary and `nodes[1]` as its replica; `sentinels` watch them.

    `credentials` (with `acl`, the text of an ACL file given to every data node, or alone as
    `requirepass`) is what replicas, sentinels and this class log in with; that user needs
    replication and the commands Sentinel sends (simplest: +@all). `server_args` go to both data
    nodes, e.g. ("--notify-keyspace-events", "Kgn").
    """

    def __init__(
        self,
        folder: Path,
        *,
        master_name: str = "mymaster",
        credentials: Credentials | None = None,
        acl: str | None = None,
        server_args: tuple[str, ...] = (),
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
    ) -> None:
        self.folder = folder
        self.master_name = master_name
        self.credentials = credentials
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.nodes = [
            RedisServer(
                d, args=REPLICATION_ARGS + auth_args(d, credentials, acl) + server_args, credentials=credentials
            )
            for d in (folder / "node-0", folder / "node-1")
        ]
        self.sentinels = [
            RedisServer(d, config=d / "sentinel.conf", args=("--sentinel",))
            for d in (folder / f"sentinel-{i}" for i in range(3))
        ]
        self._previous: tuple[str, int] | None = None

    def __enter__(self) -> SentinelTopology:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """For redis.asyncio.sentinel.Sentinel(...)."""
        return [s.address for s in self.sentinels]

    @property
    def sentinels_setting(self) -> str:
        """The form MACHINE_HUB_REDIS_SENTINELS will take: host:port,host:port,..."""
        return ",".join(f"{host}:{port}" for host, port in self.sentinel_addresses)

    def start(self, timeout_s: float = 30.0) -> SentinelTopology:
        try:
            primary, replica = self.nodes
            primary.start()
            replica.start()
            self._replicate(replica, primary, timeout_s)
            for sentinel in self.sentinels:
                self._write_config(sentinel, primary)
                sentinel.start()
            self.wait_healthy(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        kill_all([*self.sentinels, *self.nodes])  # sentinels first: no failover while the nodes go

    def primary_address(self) -> tuple[str, int]:
        """The primary as the first sentinel that answers reports it."""
        for sentinel in self.sentinels:
            try:
                return self._reported_primary(sentinel)
            except redis.RedisError:
                continue
        raise RuntimeError("no sentinel answered")

    def primary(self) -> RedisServer:
        return self.node_at(self.primary_address())

    def node_at(self, address: tuple[str, int]) -> RedisServer:
        return next(n for n in self.nodes if n.address == address)

    def kill_primary(self) -> RedisServer:
        """SIGKILL the primary the sentinels report; wait_failover() then waits for its successor."""
        node = self.primary()
        self._previous = node.address
        node.kill()
        return node

    def pause_primary(self) -> RedisServer:
        """SIGSTOP the primary (a hung host: connections stay open, nothing answers); follow with
        wait_failover(), then restart() it, or resume() it and wait_healthy() until it is a replica."""
        node = self.primary()
        self._previous = node.address
        node.pause()
        return node

    def switchover(self) -> None:
        """A failover with the primary still running (SENTINEL FAILOVER); follow with wait_failover().

        The old primary keeps taking writes from clients still connected to it until the sentinels
        turn it into a replica, about 10 s later (wait_healthy() waits for that)."""
        self._previous = self.primary_address()
        self.sentinels[0].execute("SENTINEL", "FAILOVER", self.master_name)

    def wait_failover(self, timeout_s: float = 30.0) -> RedisServer:
        """Until every live sentinel reports another primary than before, and it takes writes."""
        previous = self._previous
        if previous is None:
            raise RuntimeError("wait_failover() follows kill_primary() or switchover()")

        def promoted() -> RedisServer | None:
            answers = {self._reported_primary(s) for s in self.sentinels if s.alive}
            if len(answers) != 1 or previous in answers:
                return None
            node = self.node_at(answers.pop())
            if not node.alive:
                return None
            with node.client() as client:
                if client.execute_command("ROLE")[0] != "master":
                    return None
                client.set(PROBE_KEY, "1", px=1)  # fails with READONLY or NOAUTH until it is ready
            return node

        node = poll_until(promoted, timeout_s, f"the sentinels to promote a replica of {previous}")
        self._previous = None
        return node

    def restart(self, node: RedisServer, timeout_s: float = 30.0) -> RedisServer:
        """Start a data node or sentinel again (SIGTERM first if it runs or is paused), until all is healthy.

        A data node comes back as a replica of the current primary unless it is the primary; it
        has no persistence, so it starts empty (and so do its ACL users, unless they are in `acl`).
        A sentinel keeps its state in the configuration file it rewrites."""
        if node.alive:
            node.stop()
        node.start()
        if node in self.nodes and (primary := self.primary()) is not node:
            self._replicate(node, primary, timeout_s)
        self.wait_healthy(timeout_s)
        return node

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        """Until every live sentinel agrees on the primary, sees it up, sees the other sentinels,
        and sees each other live data node as a replica in sync."""
        poll_until(self._healthy, timeout_s, "the sentinels to agree on a healthy primary and replica")

    def execute_on_all_nodes(self, *args: Any) -> dict[int, Any]:
        """One command on every running data node (ACL users are not replicated), by port."""
        return {node.port: node.execute(*args) for node in self.nodes if node.alive}

    def _healthy(self) -> bool:
        # A sentinel refreshes a replica's INFO only every 10 s, so the replication link is read from
        # the replicas themselves. Each sentinel must see them up and have read their INFO since
        # connecting, or it finds no replica to promote (NOGOODSLAVE).
        live = [s for s in self.sentinels if s.alive]
        answers = {self._reported_primary(s) for s in live}
        if len(answers) != 1:
            return False
        primary = self.node_at(answers.pop())
        replicas = [n for n in self.nodes if n.alive and n is not primary]
        if not primary.alive or not all(self._in_sync(r, primary) for r in replicas):
            return False
        for sentinel in live:
            with sentinel.client() as client:
                state = client.sentinel_master(self.master_name)
                if state["is_sdown"] or state["is_odown"] or state["num-other-sentinels"] != len(self.sentinels) - 1:
                    return False
                seen = {
                    (r["ip"], r["port"])
                    for r in client.sentinel_slaves(self.master_name)
                    if not (r["is_sdown"] or r["is_odown"] or r["is_disconnected"])
                    and r["info-refresh"] > 0  # 0: no INFO read since it (re)connected
                }
            if not {r.address for r in replicas} <= seen:
                return False
        return True

    def _reported_primary(self, sentinel: RedisServer) -> tuple[str, int]:
        with sentinel.client() as client:
            answer = client.sentinel_get_master_addr_by_name(self.master_name)
        if answer is None:
            raise redis.ResponseError(f"sentinel {sentinel.port} does not know {self.master_name}")
        host, port = answer
        return (host, int(port))

    def _replicate(self, replica: RedisServer, primary: RedisServer, timeout_s: float) -> None:
        replica.execute("REPLICAOF", *primary.address)
        poll_until(lambda: self._in_sync(replica, primary), timeout_s, f"{replica} to replicate {primary}")

    @staticmethod
    def _in_sync(replica: RedisServer, primary: RedisServer) -> bool:
        with replica.client() as client:
            info = client.info("replication")
        return bool(
            info["role"] == "slave" and info["master_port"] == primary.port and info["master_link_status"] == "up"
        )

    def _write_config(self, sentinel: RedisServer, primary: RedisServer) -> None:
        name = self.master_name
        lines = [
            f"sentinel monitor {name} {primary.address[0]} {primary.port} 2",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]
        if self.credentials is not None:
            if self.credentials.username:
                lines.append(f"sentinel auth-user {name} {config_value(self.credentials.username)}")
            lines.append(f"sentinel auth-pass {name} {config_value(self.credentials.password)}")
        sentinel.folder.mkdir(parents=True, exist_ok=True)
        (sentinel.folder / "sentinel.conf").write_text("\n".join(lines) + "\n")
