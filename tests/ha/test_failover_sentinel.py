"""Failovers under Sentinel with real hubs, worker and agents: the primary is killed (SIGKILL) while
requests run, and a claim is lost on the way to the replica."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from core.acl import machine_user
from machine_hub.redis_sentinel import SentinelTopology
from machine_hub.redis_server import RedisServer, poll_until
from tests.e2e.harness import wait_until
from tests.ha.load import Load, check_calls, launches_by_directory
from tests.ha.stack import (
    ADMIN,
    TopologyStack,
    failover_stack,
    job,
    marked_offline,
    online,
    start_agents,
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TopologyStack]:
    with failover_stack("sentinel", tmp_path_factory) as stack:
        yield stack


def sentinels(stack: TopologyStack) -> SentinelTopology:
    assert isinstance(stack.topology, SentinelTopology)
    return stack.topology


def test_a_killed_primary_loses_no_machine_and_runs_no_spawn_twice(stack: TopologyStack) -> None:
    topology = sentinels(stack)
    machine_ids = stack.machine_ids(3)
    start_agents(stack, machine_ids)
    with Load(stack, machine_ids) as load:
        wait_until(lambda: load.answered() >= 12, 30, "requests answered before the failover")
        killed_at = time.monotonic()
        killed = topology.kill_primary()
        topology.wait_failover()
        wait_until(lambda: online(stack, machine_ids), 30, "every agent listed again after the failover")
        # The new primary has no replica until the old one is back: claims wait for one (WAIT), so
        # spawns are not started meanwhile. Then they run again.
        topology.restart(killed)
        back = time.monotonic()
        wait_until(lambda: load.answered(since=back) >= 12, 30, "requests answered once a replica is back")

    unavailable = [c for c in load.calls if c.status == 503]
    assert unavailable and all(killed_at - 1 <= c.started <= back for c in unavailable), "503 only while failing over"
    job_ids = {c.body["jobId"] for c in load.calls if c.kind == "spawn" and c.status == 200}
    wait_until(
        lambda: all((j := job(stack, job_id)) is not None and j.get("state") != "running" for job_id in job_ids),
        20,
        "every spawn's job to settle",
    )
    outcomes = check_calls(stack, load.calls)
    assert outcomes.get("spawn succeeded", 0) >= 3 and outcomes.get("paths 200", 0) >= 6, outcomes
    assert marked_offline(stack, machine_ids) == [], "the sweep took live machines offline"


def break_replication(primary: RedisServer, replica: RedisServer) -> None:
    """From now on `replica` receives nothing of `primary`'s writes, both running: it can no longer
    log in to replicate (and the sentinels, which still see both, may promote it)."""
    replica.execute("CONFIG", "SET", "masterauth", "not-the-password")
    primary.execute("CLIENT", "KILL", "TYPE", "replica")

    def down() -> bool:
        with replica.client() as client:
            return bool(client.info("replication")["master_link_status"] == "down")

    poll_until(down, 10, "the replica to lose its link")


@pytest.mark.parametrize("wait_replicas", [0, 1])
def test_a_claim_lost_in_a_failover_never_runs_the_spawn_twice(
    stack: TopologyStack, tmp_path: Path, wait_replicas: int
) -> None:
    """The claim reaches the primary only; the primary dies; on the promoted replica the job is
    queued again and back in the mailbox, and the same agent takes it again. With WAIT_REPLICAS=0
    the first claim ran the spawn and the journal answers the second; with 1 the unreplicated
    claim never ran it, and the second answers not_started too."""
    topology = sentinels(stack)
    wait = {"MACHINE_HUB_REDIS_WAIT_REPLICAS": str(wait_replicas)}
    hub = stack.start_hub(MACHINE_HUB_SPAWN_CLAIM_TIMEOUT_S="20", MACHINE_HUB_SPAWN_TIMEOUT_S="25", **wait)
    (machine_id,) = stack.machine_ids(1)
    # Its heartbeat outlives the pauses below, so the sweep keeps the machine online meanwhile.
    agent = stack.start_agent(machine_id, MACHINE_HUB_HEARTBEAT_TTL_S="30", **wait)
    primary = topology.primary()
    replica = next(n for n in topology.nodes if n is not primary)
    mailbox = stack.keys.mailbox("default", machine_id)
    answers: list[httpx2.Response] = []

    def spawn() -> None:
        url = f"{hub.url}/api/machines/{machine_id}/spawn"
        answers.append(httpx2.post(url, headers=stack.auth(), json={"directory": str(tmp_path)}, timeout=60))

    agent.signal(signal.SIGSTOP)
    # Redis would hand the job to the mailbox read the agent has pending; without that read it stays
    # in the mailbox until the agent, resumed, reads again (on the primary alone, as it claims).
    primary.execute("CLIENT", "KILL", "USER", machine_user(stack.keys, "default", machine_id))
    caller = threading.Thread(target=spawn)
    caller.start()
    poll_until(lambda: replica.execute("LLEN", mailbox) == 1, 10, "the queued job on the replica")
    break_replication(primary, replica)
    agent.signal(signal.SIGCONT)  # it pops and claims on the primary alone
    caller.join(30)
    (answer,) = answers
    first = answer.json()
    launches = launches_by_directory(stack)
    if wait_replicas:
        assert (first["success"], first["code"]) == (False, "not_started"), first
        assert launches[str(tmp_path)] == 0
    else:
        assert first["success"] is True, first
        assert launches[str(tmp_path)] == 1

    agent.signal(signal.SIGSTOP)  # it takes the job again once a replica can hold its claim
    killed = topology.kill_primary()
    replica.execute("CONFIG", "SET", "masterauth", ADMIN.password)
    topology.wait_failover()
    topology.restart(killed)
    record = json.loads(stack.redis.get(stack.keys.job("default", machine_id, first["jobId"])))
    assert record["state"] == "queued" and stack.redis.llen(mailbox) == 1, "the claim and the pop were lost"
    agent.signal(signal.SIGCONT)

    settled = wait_until(
        lambda: (j := job(stack, first["jobId"])) and j["state"] in ("succeeded", "failed") and j,
        45,  # past the claim and spawn deadlines (20 s, 25 s) the hub started with
        "the job taken again to settle",
    )
    assert launches_by_directory(stack)[str(tmp_path)] == (0 if wait_replicas else 1)
    if wait_replicas:
        assert (settled["state"], settled["result"]["code"]) == ("failed", "not_started"), settled
    else:
        assert settled["state"] == "succeeded" and settled["result"]["sessionId"] == first["sessionId"], settled
    assert agent.alive()
