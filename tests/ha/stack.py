"""The end-to-end Stack (tests/e2e/harness.py) on a Sentinel deployment or a Redis Cluster.

The data nodes run as deployments do: users in an ACL file on every node (the admin logs in as
`admin`; the default user is off), heartbeat notifications on. Processes get the topology the way
users give it, through the environment: MACHINE_HUB_REDIS_SENTINELS and _MASTER, or
MACHINE_HUB_REDIS_CLUSTER=1 with MACHINE_HUB_WORKER_REDIS_URL naming a small plain Redis for arq.
Every role's user is made by core.admin on every data node, as `machine-hub setup` and
`machine add` do.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import httpx2
import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster, key_slot
from redis.sentinel import Sentinel

from core.acl import machine_user
from core.notifications import NOTIFY_FLAGS
from machine_hub.redis_cluster import ClusterTopology
from machine_hub.redis_sentinel import SentinelTopology
from machine_hub.redis_server import Credentials, RedisServer
from tests.e2e.harness import Process, Stack, fast_settings

Kind = Literal["sentinel", "cluster"]
KINDS: tuple[Kind, ...] = ("sentinel", "cluster")
ADMIN = Credentials(password="ha-admin-pw", username="admin")
ACL = f"user default off\nuser {ADMIN.username} on >{ADMIN.password} ~* &* +@all\n"
SERVER_ARGS = ("--notify-keyspace-events", NOTIFY_FLAGS)
Topology = SentinelTopology | ClusterTopology


@dataclass
class TopologyStack(Stack):
    """A Stack whose Redis is `topology`; `arq_server` is arq's own Redis beside a Cluster."""

    topology: Topology | None = None
    arq_server: RedisServer | None = None
    # Several processes start at once here, on a machine other test runs share.
    startup_timeout_s = 60.0

    def __post_init__(self) -> None:
        self._sentinels: list[Sentinel] = []  # Sentinel has no close() of its own
        super().__post_init__()
        if self.arq_server is not None:
            self.arq_redis = redis.Redis.from_url(self.arq_server.url, socket_timeout=5)

    def data_client(self) -> Any:
        return self.client_for(self.settings.redis_url)

    def client_for(self, url: str) -> Any:
        """A synchronous client of the topology with the user and password of `url`; close() it."""
        parts = urlsplit(url)
        login = {"username": unquote(parts.username or ""), "password": unquote(parts.password or "")}
        timeouts: dict[str, Any] = {"socket_timeout": 2, "socket_connect_timeout": 1}
        if isinstance(self.topology, SentinelTopology):
            sentinel = Sentinel(self.topology.sentinel_addresses, sentinel_kwargs=timeouts, **timeouts)
            self._sentinels.append(sentinel)
            return sentinel.master_for(self.topology.master_name, **login, **timeouts)
        assert isinstance(self.topology, ClusterTopology)
        nodes = [ClusterNode(host, port) for host, port in self.topology.startup_nodes]
        return RedisCluster(startup_nodes=nodes, **login, **timeouts)

    @property
    def nodes(self) -> list[RedisServer]:
        assert self.topology is not None
        return self.topology.nodes

    def machine_ids(self, count: int, namespace: str = "default") -> list[str]:
        """`count` new machine ids; in a Cluster, their keys land on every primary in turn."""
        if not isinstance(self.topology, ClusterTopology):
            return [f"m-{uuid.uuid4().hex[:8]}" for _ in range(count)]
        primaries = [n.port for n in self.topology.primaries_now()]
        out: list[str] = []
        while len(out) < count:
            candidate = f"m-{uuid.uuid4().hex[:8]}"
            if self.primary_of(namespace, candidate).port == primaries[len(out) % len(primaries)]:
                out.append(candidate)
        return out

    def primary_of(self, namespace: str, machine_id: str) -> RedisServer:
        """The node that holds the machine's keys now (the primary, under Sentinel)."""
        if isinstance(self.topology, SentinelTopology):
            return self.topology.primary()
        assert isinstance(self.topology, ClusterTopology)
        return self.topology.owner(key_slot(self.keys.heartbeat(namespace, machine_id).encode()))

    def users_by_node(self, namespace: str, machine_id: str) -> dict[int, bool]:
        """Whether the machine's Redis user exists, on every running data node, by port."""
        assert self.topology is not None
        user = machine_user(self.keys, namespace, machine_id)
        found = self.topology.execute_on_all_nodes("ACL", "GETUSER", user)
        return {port: answer is not None for port, answer in found.items()}

    def close(self) -> None:
        super().close()
        for sentinel in self._sentinels:
            for client in sentinel.sentinels:
                client.close()


# A primary counts as down after this long without a reply. One second (the class's default) let a
# busy 2-core CI box stall a healthy new primary past it and fail over twice in one test.
DOWN_AFTER_MS = 2500


def start_topology(kind: Kind, folder: Path) -> Topology:
    if kind == "sentinel":
        return SentinelTopology(
            folder, credentials=ADMIN, acl=ACL, server_args=SERVER_ARGS, down_after_ms=DOWN_AFTER_MS
        ).start()
    return ClusterTopology(folder, replicas=True, credentials=ADMIN, acl=ACL, server_args=SERVER_ARGS).start()


def admin_url(node: RedisServer) -> str:
    return f"redis://{ADMIN.username}:{ADMIN.password}@127.0.0.1:{node.port}/0"


@contextmanager
def topology_stack(kind: Kind, tmp: pytest.TempPathFactory, **overrides: Any) -> Iterator[TopologyStack]:
    """A started topology of `kind` and a Stack on it (no processes yet); all ended afterwards.

    REDIS_URL names the first node: under Sentinel only its user and password are used."""
    with ExitStack() as cleanup:
        topology = start_topology(kind, tmp.mktemp(kind))
        cleanup.callback(topology.stop)
        arq_server = None
        if kind == "sentinel":
            topo: dict[str, Any] = {
                "redis_sentinels": tuple(topology.sentinels_setting.split(",")),
                "redis_master": topology.master_name,
            }
        else:
            arq_server = RedisServer(tmp.mktemp("arq")).start()
            cleanup.callback(arq_server.kill)
            topo = {"redis_cluster": True, "worker_redis_url": arq_server.url}
        settings = fast_settings(admin_url(topology.nodes[0]), **topo, **overrides)
        stack = TopologyStack(tmp.mktemp("stack"), None, settings, topology=topology, arq_server=arq_server)
        cleanup.callback(stack.close)
        yield stack


@contextmanager
def failover_stack(kind: Kind, tmp: pytest.TempPathFactory) -> Iterator[TopologyStack]:
    """A stack of `kind` with hubs and a worker for the failover suites: claims wait for a replica,
    and fast heartbeats, so a machine the failover loses shows within seconds."""
    settings = {"redis_wait_replicas": 1, "heartbeat_interval_s": 0.3, "heartbeat_ttl_s": 1.5}
    with topology_stack(kind, tmp, **settings) as stack:
        start_services(stack)
        yield stack


def start_services(stack: Stack, hubs: int = 2, **env: str) -> None:
    """`hubs` hubs and a worker, started together (each waits for its own readiness)."""
    with ThreadPoolExecutor(hubs + 1) as pool:
        started = [pool.submit(stack.start_hub, **env) for _ in range(hubs)]
        worker = pool.submit(stack.start_worker, **env)
        stack.hubs = [future.result() for future in started]
        worker.result()


def start_agents(stack: Stack, machine_ids: list[str], namespace: str = "default", **env: str) -> list[Process]:
    """An agent for each machine, started together; once every one of them is online."""
    with ThreadPoolExecutor(len(machine_ids)) as pool:
        futures = [pool.submit(stack.start_agent, m, namespace, **env) for m in machine_ids]
        return [future.result() for future in futures]


def online(stack: TopologyStack, machine_ids: list[str]) -> bool:
    """Every one of them listed by every hub (an error answer counts as not yet)."""
    for hub in stack.hubs:
        r = httpx2.get(f"{hub.url}/api/machines", headers=stack.auth(), timeout=10)
        if r.status_code != 200 or not set(machine_ids) <= {m["id"] for m in r.json()["machines"]}:
            return False
    return True


def job(stack: TopologyStack, job_id: str) -> dict[str, Any] | None:
    """GET /api/jobs/<id>: the job, {} when there is none (404), None on any other answer."""
    r = httpx2.get(f"{stack.hubs[0].url}/api/jobs/{job_id}", headers=stack.auth(), timeout=10)
    if r.status_code == 404:
        return {}
    body: dict[str, Any] | None = r.json() if r.status_code == 200 else None
    return body


def marked_offline(stack: TopologyStack, machine_ids: list[str]) -> list[str]:
    """Those the worker's sweep (or listener) marked offline, as its log says."""
    worker = next(p for p in stack.processes if p.name.startswith("worker"))
    return [m for m in machine_ids if f"machine {m} in namespace default is offline" in worker.log_text()]
