"""Fixtures for the high-availability tests: a Sentinel deployment and a Redis Cluster, real processes.

`sentinel_topology` (primary, replica, three sentinels) and `cluster_topology` (three primaries,
a replica each) are module-scoped: a test that kills a node restarts it before it ends. For other
options (credentials, an ACL file, keyspace notifications, no replicas), override the fixture in a
suite's conftest with the factories, e.g. `start_sentinel_topology(server_args=(...))`. A failed
test gets the end of every node's log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from machine_hub.redis_cluster import ClusterTopology
from machine_hub.redis_sentinel import SentinelTopology
from machine_hub.redis_server import RedisServer
from tests.e2e.harness import Stack
from tests.ha.stack import TopologyStack

SentinelFactory = Callable[..., SentinelTopology]
ClusterFactory = Callable[..., ClusterTopology]


@pytest.fixture(scope="module")
def start_sentinel_topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelFactory]:
    """start(**SentinelTopology options) -> a started topology, stopped when the module ends."""
    with ExitStack() as stack:

        def start(**options: Any) -> SentinelTopology:
            return stack.enter_context(SentinelTopology(tmp_path_factory.mktemp("sentinel"), **options))

        yield start


@pytest.fixture(scope="module")
def start_cluster_topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterFactory]:
    """start(**ClusterTopology options) -> a started cluster, stopped when the module ends."""
    with ExitStack() as stack:

        def start(**options: Any) -> ClusterTopology:
            return stack.enter_context(ClusterTopology(tmp_path_factory.mktemp("cluster"), **options))

        yield start


@pytest.fixture(scope="module")
def sentinel_topology(start_sentinel_topology: SentinelFactory) -> SentinelTopology:
    return start_sentinel_topology()


@pytest.fixture(scope="module")
def cluster_topology(start_cluster_topology: ClusterFactory) -> ClusterTopology:
    return start_cluster_topology(replicas=True)


def _servers(item: pytest.Item) -> list[RedisServer]:
    servers: list[RedisServer] = []
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, TopologyStack):
            value = value.topology
        if isinstance(value, SentinelTopology):
            servers += [*value.nodes, *value.sentinels]
        elif isinstance(value, ClusterTopology):
            servers += value.nodes
    return servers


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, Stack):
                report.sections.append(("process logs", "\n".join(value.dump_logs())))
        for server in _servers(item):
            report.sections.append((f"{server.folder.name} (port {server.port})", server.log_tail(3000)))
    return report
