from __future__ import annotations

import pytest

from core.errors import SettingsError
from core.settings import Settings
from core.topology import cluster_seeds


def cluster(**more: object) -> Settings:
    return Settings(redis_url="redis://u:p@a:7000/0", redis_cluster=True, worker_redis_url="redis://q:1/0", **more)


def test_cluster_seeds_start_with_redis_urls_node_and_name_each_node_once() -> None:
    assert cluster_seeds(cluster()) == [("a", 7000)]
    more = cluster(redis_cluster_nodes=("b:7001", "a:7000", "[::1]:7002"))
    assert cluster_seeds(more) == [("a", 7000), ("b", 7001), ("::1", 7002)]


def test_cluster_nodes_are_read_from_a_comma_list_and_need_a_cluster() -> None:
    env = {
        "REDIS_URL": "redis://a:7000/0",
        "MACHINE_HUB_REDIS_CLUSTER": "1",
        "MACHINE_HUB_WORKER_REDIS_URL": "redis://q:1",
    }
    read = Settings.from_env({**env, "MACHINE_HUB_REDIS_CLUSTER_NODES": "b:7001, c:7002"})
    assert read.redis_cluster_nodes == ("b:7001", "c:7002")
    with pytest.raises(SettingsError, match="MACHINE_HUB_REDIS_CLUSTER=1"):
        Settings.from_env({"MACHINE_HUB_REDIS_CLUSTER_NODES": "b:7001"})


@pytest.mark.parametrize("address", ["b", "b:", ":7001", "b:seventy", "b:0", "b:70000"])
def test_a_cluster_node_that_is_not_host_and_port_is_refused(address: str) -> None:
    with pytest.raises(SettingsError, match="is not host:port"):
        cluster_seeds(cluster(redis_cluster_nodes=(address,)))
