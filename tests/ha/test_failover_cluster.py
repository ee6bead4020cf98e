"""A Redis Cluster failover with real hubs, worker and agents: one primary is killed (SIGKILL)
while requests run for machines on every primary."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from machine_hub.redis_cluster import ClusterTopology
from tests.e2e.harness import wait_until
from tests.ha.load import Load, check_calls
from tests.ha.stack import TopologyStack, failover_stack, job, marked_offline, online, start_agents

# Between a primary's death and its replica's promotion the whole cluster answers CLUSTERDOWN
# (about 2 s here); requests that began then, or a client's timeouts later, may get 503.
OUTAGE_MARGIN_S = 3.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TopologyStack]:
    with failover_stack("cluster", tmp_path_factory) as stack:
        yield stack


def test_a_killed_primary_is_replaced_and_other_machines_keep_working(stack: TopologyStack) -> None:
    topology = stack.topology
    assert isinstance(topology, ClusterTopology)
    machine_ids = stack.machine_ids(3)  # one per primary
    start_agents(stack, machine_ids)
    # Not the node REDIS_URL names: processes started later still find the cluster through it.
    victim_id = next(m for m in machine_ids if stack.primary_of("default", m) is not topology.nodes[0])
    victim = stack.primary_of("default", victim_id)
    with Load(stack, machine_ids) as load:
        wait_until(lambda: load.answered() >= 12, 30, "requests answered before the failover")
        killed_at = time.monotonic()
        topology.kill(victim)
        topology.wait_healthy()
        healthy_at = time.monotonic()
        wait_until(lambda: online(stack, machine_ids), 30, "every agent listed again after the failover")
        # The promoted replica has no replica of its own until the old primary is back: claims
        # for its machine wait for one (WAIT). Then they run again.
        topology.restart(victim)
        back = time.monotonic()
        wait_until(
            lambda: sum(c.machine_id == victim_id for c in load.calls if c.started > back and c.status == 200) >= 4,
            30,
            "requests for the moved machine answered once it has a replica again",
        )

    assert stack.primary_of("default", victim_id) is not victim, "its replica took over"
    for call in load.calls:
        if call.machine_id != victim_id and call.status == 503:
            assert killed_at - 1 <= call.started <= healthy_at + OUTAGE_MARGIN_S, call
    job_ids = {c.body["jobId"] for c in load.calls if c.kind == "spawn" and c.status == 200}
    wait_until(
        lambda: all((j := job(stack, job_id)) is not None and j.get("state") != "running" for job_id in job_ids),
        20,
        "every spawn's job to settle",
    )
    outcomes = check_calls(stack, load.calls)
    assert outcomes.get("spawn succeeded", 0) >= 3 and outcomes.get("paths 200", 0) >= 6, outcomes
    assert marked_offline(stack, machine_ids) == [], "the sweep took live machines offline"
