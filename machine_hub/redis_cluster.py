"""A Redis Cluster on loopback: primaries (three by default), optionally a replica each, each a redis-server.

Built by hand rather than with `redis-cli --cluster create`, which sleeps in fixed steps and
pairs replicas with primaries as it likes: every node gets a config epoch, the primaries split
the 16384 slots evenly, the first node MEETs the others, replica i follows primary i. Every
wait polls with a deadline. ACL users live on each node alone: execute_on_all_nodes() applies
one to all of them.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

from machine_hub.redis_server import (
    REPLICATION_ARGS,
    Credentials,
    RedisServer,
    auth_args,
    free_port,
    kill_all,
    poll_until,
)

SLOTS = 16384
# Flags of a node another node must not trust: failing, possibly failing, or not yet joined.
UNHEALTHY = {"fail", "fail?", "handshake", "noaddr"}


class ClusterTopology:
    """`nodes[:primaries]` start as primaries; `nodes[primaries + i]` replicates `nodes[i]`.

    `credentials`, `acl` and `server_args` are as for SentinelTopology. A node is down after
    `node_timeout_ms` without an answer; its replica takes over about one to two such timeouts later.
    """

    def __init__(
        self,
        folder: Path,
        *,
        primaries: int = 3,
        replicas: bool = False,
        credentials: Credentials | None = None,
        acl: str | None = None,
        server_args: tuple[str, ...] = (),
        node_timeout_ms: int = 1000,
    ) -> None:
        self.folder = folder
        self.primaries = primaries
        self.credentials = credentials
        self.nodes: list[RedisServer] = []
        for i in range(primaries * (2 if replicas else 1)):
            d = folder / f"node-{i}"
            cluster_args = (
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",  # the bus port, else port + 10000, which may be taken or past 65535
                str(free_port()),
                "--cluster-node-timeout",
                str(node_timeout_ms),
            )
            args = REPLICATION_ARGS + cluster_args + auth_args(d, credentials, acl) + server_args
            self.nodes.append(RedisServer(d, args=args, credentials=credentials))

    def __enter__(self) -> ClusterTopology:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """For redis.asyncio.cluster.RedisCluster(startup_nodes=[ClusterNode(host, port), ...])."""
        return [n.address for n in self.nodes]

    def start(self, timeout_s: float = 30.0) -> ClusterTopology:
        try:
            for node in self.nodes:
                node.start()
            for epoch, node in enumerate(self.nodes, start=1):
                node.execute("CLUSTER", "SET-CONFIG-EPOCH", epoch)
            for i, node in enumerate(self.nodes[: self.primaries]):
                first, last = SLOTS * i // self.primaries, SLOTS * (i + 1) // self.primaries - 1
                node.execute("CLUSTER", "ADDSLOTSRANGE", first, last)
            for node in self.nodes[1:]:
                self.nodes[0].execute("CLUSTER", "MEET", "127.0.0.1", node.port, self._bus_port(node))
            poll_until(self._all_known, timeout_s, "every node to know every other")
            for primary, replica in zip(self.nodes, self.nodes[self.primaries :], strict=False):
                self._replicate(replica, primary, timeout_s)
            self.wait_healthy(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        kill_all(self.nodes)

    def kill(self, node: RedisServer) -> None:
        """SIGKILL; wait_healthy() then waits until a replica serves its slots (if it had one)."""
        node.kill()

    def pause(self, node: RedisServer) -> None:
        """SIGSTOP (a hung host: its connections stay open, nothing answers); wait_healthy() then
        waits as after kill(). resume() it (node.resume()) or restart() it afterwards."""
        node.pause()

    def restart(self, node: RedisServer, timeout_s: float = 30.0) -> RedisServer:
        """Start `node` again (SIGTERM first if it runs or is paused); it keeps its id and rejoins, as a replica if
        another node took over its slots. Until the cluster is healthy again."""
        if node.alive:
            node.stop()
        node.start()
        self.wait_healthy(timeout_s)
        return node

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        """Until every live node says cluster_state:ok, every slot's owner is alive, and every live
        node is known, trusted and in sync by every other (so the next failover can happen)."""
        poll_until(self._healthy, timeout_s, "the cluster to be healthy")

    def primaries_now(self) -> list[RedisServer]:
        """The nodes that serve slots now (in the first live node's view), by their first slot."""
        owners = sorted(self._slot_ranges(self._live()[0]).items(), key=lambda item: item[1][0])
        return [self._node(port) for port, _ in owners]

    def owner(self, slot: int) -> RedisServer:
        """The node that serves `slot`, in the first live node's view."""
        for port, ranges in self._slot_ranges(self._live()[0]).items():
            if any(first <= slot <= last for first, last in ranges):
                return self._node(port)
        raise LookupError(f"slot {slot} is not served")

    def execute_on_all_nodes(self, *args: Any) -> dict[int, Any]:
        """One command on every running node, primaries and replicas (ACL users are per node), by port."""
        return {node.port: node.execute(*args) for node in self._live()}

    def _live(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.alive]

    def _node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    @staticmethod
    def _bus_port(node: RedisServer) -> int:
        return int(node.args[node.args.index("--cluster-port") + 1])

    @staticmethod
    def _replicate(replica: RedisServer, primary: RedisServer, timeout_s: float) -> None:
        primary_id = primary.execute("CLUSTER", "MYID")
        poll_until(
            lambda: replica.execute("CLUSTER", "REPLICATE", primary_id), timeout_s, f"{replica} to follow {primary}"
        )

    def _all_known(self) -> bool:
        return all(self._cluster_info(n)["cluster_known_nodes"] == str(len(self.nodes)) for n in self.nodes)

    @staticmethod
    def _cluster_info(node: RedisServer) -> dict[str, str]:
        text: str = node.execute("CLUSTER", "INFO")
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    @staticmethod
    def _node_table(node: RedisServer) -> list[tuple[int, set[str], list[str]]]:
        """CLUSTER NODES in `node`'s view: each node's port, flags and slot ranges ("0-5460", "42")."""
        text: str = node.execute("CLUSTER", "NODES")
        rows = []
        for line in text.splitlines():
            fields = line.split()  # id, ip:port@bus[,hostname], flags, primary id, ..., slots
            if fields:
                port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                rows.append((port, set(fields[2].split(",")), [f for f in fields[8:] if not f.startswith("[")]))
        return rows

    def _slot_ranges(self, node: RedisServer) -> dict[int, list[tuple[int, int]]]:
        ranges: dict[int, list[tuple[int, int]]] = {}
        for port, _, slots in self._node_table(node):
            for text in slots:
                first, _, last = text.partition("-")
                ranges.setdefault(port, []).append((int(first), int(last or first)))
        return ranges

    def _healthy(self) -> bool:
        live = self._live()
        ports = {n.port for n in live}
        for node in live:
            if self._cluster_info(node)["cluster_state"] != "ok":
                return False
            table = self._node_table(node)
            if len(table) != len(self.nodes):
                return False
            for port, flags, slots in table:
                if (port in ports and flags & UNHEALTHY) or (slots and port not in ports):
                    return False
            with node.client() as client:
                info = client.info("replication")
            if info["role"] == "slave" and info["master_link_status"] != "up":
                return False
        return True
