"""machine-hub end to end on a Sentinel deployment and on a Redis Cluster: real hubs, worker and
agents, each with its own Redis user made on every data node. Claims wait for one replica
(MACHINE_HUB_REDIS_WAIT_REPLICAS=1), as a deployment that must not lose them runs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx2
import pytest
import redis
from redis import exceptions

from core.acl import machine_user
from machine_hub.redis_server import free_port
from tests.e2e.event_stream import about, events
from tests.e2e.harness import wait_until
from tests.ha.stack import KINDS, TopologyStack, start_agents, start_services, topology_stack


@pytest.fixture(scope="module", params=KINDS)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TopologyStack]:
    with topology_stack(request.param, tmp_path_factory, redis_wait_replicas=1) as stack:
        start_services(stack)
        yield stack


def listed(stack: TopologyStack, hub: int = 0, **params: Any) -> dict[str, Any]:
    r = httpx2.get(f"{stack.hubs[hub].url}/api/machines", headers=stack.auth(), params=params, timeout=10)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def spawn(stack: TopologyStack, hub: int, machine_id: str, body: dict[str, Any], **headers: str) -> httpx2.Response:
    return httpx2.post(
        f"{stack.hubs[hub].url}/api/machines/{machine_id}/spawn",
        headers={**stack.auth(), **headers},
        json=body,
        timeout=15,
    )


def test_machine_users_are_made_and_removed_on_every_node(stack: TopologyStack) -> None:
    (machine_id,) = stack.machine_ids(1)
    stack.start_agent(machine_id)  # `machine add` made its user
    users = stack.users_by_node("default", machine_id)
    assert set(users) == {n.port for n in stack.nodes}, "every data node is running"
    assert all(users.values()), f"the machine's user is missing on some node: {users}"

    removed = subprocess.run(
        [sys.executable, "-m", "machine_hub", "machine", "remove", "--namespace", "default", machine_id],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert removed.returncode == 0, removed.stderr
    assert not any(stack.users_by_node("default", machine_id).values())
    wait_until(lambda: machine_id not in [m["id"] for m in listed(stack)["machines"]], 10, "the removed machine gone")


def test_the_first_redis_address_down_keeps_no_process_out(stack: TopologyStack) -> None:
    """An operator names several sentinels, or several Cluster nodes; when the first one is down,
    `machine add` still reaches every node and the machine's agent still comes online."""
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    if stack.settings.redis_sentinels:
        more = {"MACHINE_HUB_REDIS_SENTINELS": ",".join((dead, *stack.settings.redis_sentinels))}
        admin_url = stack.settings.redis_url  # its host is not used under Sentinel
    else:
        more = {"MACHINE_HUB_REDIS_CLUSTER_NODES": ",".join(f"127.0.0.1:{n.port}" for n in stack.nodes)}
        admin_url = stack.settings.redis_url.replace(f"127.0.0.1:{stack.nodes[0].port}", dead)
        assert admin_url != stack.settings.redis_url
    (machine_id,) = stack.machine_ids(1)
    added = subprocess.run(
        [sys.executable, "-m", "machine_hub", "machine", "add", "--namespace", "default", "--machine-id", machine_id],
        env=stack.env(REDIS_URL=admin_url, **more),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert added.returncode == 0, added.stderr
    assert all(stack.users_by_node("default", machine_id).values()), "the user is made on every node"
    machine_url = added.stdout.strip().splitlines()[-1]
    if not stack.settings.redis_sentinels:
        assert dead in machine_url  # the agent, too, is told the dead node first
    stack.machine_urls["default", machine_id] = machine_url
    stack.start_agent(machine_id, **more)  # waits for its heartbeat
    wait_until(lambda: machine_id in [m["id"] for m in listed(stack)["machines"]], 10, "the machine listed")


def test_sync_users_gives_a_node_that_missed_changes_what_the_others_hold(stack: TopologyStack) -> None:
    """A node that was replaced (no users) or down during a `machine remove` (a user the others
    deleted): `machine-hub sync-users` makes it hold what the other nodes do (under Sentinel, with
    one replica, a tie: the primary's)."""
    (machine_id,) = stack.machine_ids(1)
    url = urlsplit(stack.machine_url("default", machine_id))
    user, ghost = (machine_user(stack.keys, "default", m) for m in (machine_id, "removed-while-down"))
    behind = stack.nodes[-1]  # not the node REDIS_URL names (nor, under Sentinel, the primary)
    behind.execute("ACL", "DELUSER", user)
    behind.execute("ACL", "SETUSER", ghost, "on", ">pw", "~x", "+get")
    assert not stack.users_by_node("default", machine_id)[behind.port]

    def sync() -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "machine_hub", "sync-users"]
        return subprocess.run(argv, env=stack.env(), capture_output=True, text=True, timeout=30)

    synced = sync()
    assert synced.returncode == 0, synced.stderr
    assert synced.stdout.strip() == f"127.0.0.1:{behind.port}: wrote {user}; deleted {ghost}"
    assert all(stack.users_by_node("default", machine_id).values())
    assert behind.execute("ACL", "GETUSER", ghost) is None
    login = {"username": unquote(url.username or ""), "password": unquote(url.password or "")}
    with redis.Redis(port=behind.port, socket_timeout=5, **login) as client:
        assert client.ping()  # the machine's own password, on the node that had lost it
    again = sync()
    assert again.returncode == 0 and again.stdout.startswith("no changes:"), again.stdout


def test_listing_pages_through_machines_on_every_node(stack: TopologyStack) -> None:
    ids = sorted(stack.machine_ids(3, "paging"))  # in a Cluster, one per primary
    start_agents(stack, ids, "paging")
    headers = stack.auth("paging")
    url = f"{stack.hubs[1].url}/api/machines"
    first = httpx2.get(url, headers=headers, params={"limit": 2}, timeout=10).json()
    second = httpx2.get(url, headers=headers, params={"limit": 2, "cursor": first["nextCursor"]}, timeout=10).json()
    assert [m["id"] for m in first["machines"]] == ids[:2]
    assert [m["id"] for m in second["machines"]] == ids[2:] and second.get("nextCursor") is None
    every = httpx2.get(url, headers=headers, params={"include": "offline"}, timeout=10).json()["machines"]
    assert [(m["id"], m["online"]) for m in every] == [(i, True) for i in ids]


def test_paths_spawn_replay_and_jobs(stack: TopologyStack, tmp_path: Path) -> None:
    (machine_id,) = stack.machine_ids(1)
    stack.start_agent(machine_id)
    r = httpx2.post(
        f"{stack.hubs[0].url}/api/machines/{machine_id}/paths/exists",
        headers=stack.auth(),
        json={"paths": [str(tmp_path), f"{tmp_path}/nope"]},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"exists": {str(tmp_path): True, f"{tmp_path}/nope": False}}

    body = {"directory": str(tmp_path / "work")}
    first = spawn(stack, 0, machine_id, body, **{"Idempotency-Key": "ha-replay"})
    assert first.status_code == 200 and first.json()["success"] is True, first.text
    replay = spawn(stack, 1, machine_id, body, **{"Idempotency-Key": "ha-replay"})
    assert replay.json() == first.json(), "the same key and body give the same answer, from any hub"
    other = spawn(stack, 1, machine_id, {"directory": str(tmp_path)}, **{"Idempotency-Key": "ha-replay"})
    assert other.status_code == 422
    assert [launch["cwd"] for launch in stack.launches() if str(tmp_path) in launch["cwd"]] == [body["directory"]]

    job_id = first.json()["jobId"]
    job = httpx2.get(f"{stack.hubs[1].url}/api/jobs/{job_id}", headers=stack.auth(), timeout=10).json()
    assert (job["id"], job["state"], job["machineId"]) == (job_id, "succeeded", machine_id)
    assert job["result"]["sessionId"] == first.json()["sessionId"]
    page = httpx2.get(
        f"{stack.hubs[0].url}/api/jobs", headers=stack.auth(), params={"machineId": machine_id}, timeout=10
    ).json()
    assert [(j["id"], j["state"]) for j in page["jobs"]] == [(job_id, "succeeded")]


def test_events_show_machines_and_jobs_and_the_sweep_marks_a_killed_agent_offline(
    stack: TopologyStack, tmp_path: Path
) -> None:
    (machine_id,) = stack.machine_ids(1)
    with events(stack.hubs[1].url, stack.auth()) as stream:
        agent = stack.start_agent(machine_id)
        stream.until(about(machine_id, type="machine", state="online"))
        answer = spawn(stack, 0, machine_id, {"directory": str(tmp_path)}).json()
        (job,) = stream.until(about(machine_id, type="job", kind="spawn", state="succeeded"))[-1:]
        assert job["data"].count(answer["jobId"]) == 1

        agent.kill()  # no clean stop: only the sweep can tell
        stream.until(about(machine_id, type="machine", state="offline"), timeout_s=stack.settings.heartbeat_ttl_s + 5)
    assert machine_id not in [m["id"] for m in listed(stack)["machines"]]


def test_a_machines_credentials_reach_its_own_keys_only(stack: TopologyStack) -> None:
    mine, other = stack.machine_ids(2)  # in a Cluster, on two different primaries
    stack.start_agent(other)
    client = stack.client_for(stack.machine_url("default", mine))
    try:
        client.set(stack.keys.info("default", mine), "{}")  # its own key
        for key in (
            stack.keys.heartbeat("default", other),
            stack.keys.mailbox("default", other),
            stack.keys.reg("default", mine),  # its own registration is the hubs' and worker's
            stack.keys.events("default"),
        ):
            with pytest.raises(exceptions.NoPermissionError):
                client.get(key)
        with pytest.raises(exceptions.NoPermissionError):
            client.set(stack.keys.heartbeat("default", other), "forged")
    finally:
        client.close()
    stack.wait_online("default", other)
