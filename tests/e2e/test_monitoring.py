"""Monitoring through real hubs and agents: the event stream, listings, metrics, health, shutdown."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path
from typing import Any

import httpx2

from machine_hub.redis_server import RedisServer
from tests.e2e.event_stream import EventStream, about, data, events
from tests.e2e.harness import SECRET, Process, Stack, wait_until


def check_paths(stack: Stack, hub: Process, machine_id: str, path: str) -> None:
    r = httpx2.post(
        f"{hub.url}/api/machines/{machine_id}/paths/exists", headers=stack.auth(), json={"paths": [path]}, timeout=10
    )
    assert r.status_code == 200, r.text


def spawn(stack: Stack, hub: Process, machine_id: str, directory: Path) -> dict[str, Any]:
    r = httpx2.post(
        f"{hub.url}/api/machines/{machine_id}/spawn",
        headers=stack.auth(),
        json={"directory": str(directory)},
        timeout=10,
    )
    body: dict[str, Any] = r.json()
    assert r.status_code == 200 and body["success"] is True, r.text
    return body


def test_events_resume_without_gaps_and_stay_in_their_namespace(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    hub0, hub1 = stack.hubs
    team_machine = f"{machine_id}-team"
    with events(hub0.url, stack.auth()) as first:
        stack.start_agent(machine_id)
        seen = first.until(about(machine_id, type="machine", state="online"))
        spawn(stack, hub0, machine_id, tmp_path / "a")
        spawn(stack, hub1, machine_id, tmp_path / "b")
        seen += first.until(about(machine_id, type="job", kind="spawn", state="succeeded"))
        seen += first.until(about(machine_id, type="job", kind="spawn", state="succeeded"))
        assert all(e["event"] in ("machine", "job") for e in seen)
        assert seen[-1]["event"] == "job" and data(seen[-1])["type"] == "job"
    # Disconnected: one more job happens meanwhile.
    spawn(stack, hub1, machine_id, tmp_path / "c")
    resume_from = seen[0]["id"]
    with events(hub1.url, {**stack.auth(), "Last-Event-ID": resume_from}) as again:
        replay = again.until(lambda e: e["id"] == seen[-1]["id"])
        assert [e["id"] for e in replay] == [e["id"] for e in seen[1:]]
        assert [e["data"] for e in replay] == [e["data"] for e in seen[1:]]
        missed = again.until(about(machine_id, type="job", state="succeeded"))
        assert missed[-1]["id"] > seen[-1]["id"]
    # The same through the query parameter, for clients that cannot set Last-Event-ID.
    url = f"{hub0.url}/api/events?lastEventId={resume_from}"
    with httpx2.Client(timeout=10) as c, c.stream("GET", url, headers=stack.auth()) as r:
        stream = EventStream(r)
        assert stream.next()["id"] == seen[1]["id"]
    # A token in the URL is refused, never read.
    refused = httpx2.get(f"{hub0.url}/api/events?token={SECRET}", timeout=10)
    assert refused.status_code == 400 and "Authorization" in refused.json()["detail"]
    # A team token sees only the team's events.
    with events(hub0.url, stack.auth("team")) as team, events(hub1.url, stack.auth()) as default:
        stack.start_agent(team_machine, "team")
        got = team.until(about(team_machine, type="machine", state="online"))
        spawn(stack, hub0, machine_id, tmp_path / "d")
        theirs = default.until(about(machine_id, type="job", state="succeeded"))
    assert all(data(e)["machineId"] != machine_id for e in got)
    assert all(data(e)["machineId"] != team_machine for e in theirs)


def test_include_offline_after_the_agent_stops(stack: Stack, machine_id: str) -> None:
    agent = stack.start_agent(machine_id)
    url = f"{stack.hubs[1].url}/api/machines"
    on = [
        m
        for m in httpx2.get(f"{url}?include=offline", headers=stack.auth()).json()["machines"]
        if m["id"] == machine_id
    ]
    assert on[0]["online"] is True and on[0]["queueDepth"] == 0 and on[0]["inFlight"] == 0
    assert agent.stop() == 0

    def offline() -> dict[str, Any] | None:
        machines = httpx2.get(f"{url}?include=offline", headers=stack.auth()).json()["machines"]
        mine = [m for m in machines if m["id"] == machine_id and not m["online"]]
        return mine[0] if mine else None

    record = wait_until(offline, 10, "the machine to show offline")
    assert isinstance(record["lastSeen"], int) and record["lastSeen"] >= on[0]["lastSeen"]
    assert record["metadata"]["platform"] == "linux"
    plain = httpx2.get(url, headers=stack.auth()).json()["machines"]
    assert machine_id not in [m["id"] for m in plain]
    assert httpx2.get(f"{url}?include=everything", headers=stack.auth()).status_code == 400


def test_job_listing_pages_and_filters(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    stack.start_agent(machine_id)
    hub0, hub1 = stack.hubs
    check_paths(stack, hub0, machine_id, "/")  # answered, never recorded as a job
    failed = httpx2.post(
        f"{hub0.url}/api/machines/{machine_id}/spawn", headers=stack.auth(), json={"directory": "/etc/passwd"}
    ).json()
    assert failed["code"] == "not_a_directory"
    spawns = [spawn(stack, hub0, machine_id, tmp_path / str(i))["jobId"] for i in range(3)]
    stopped = httpx2.post(
        f"{hub1.url}/api/machines/{machine_id}/sessions/{spawn(stack, hub1, machine_id, tmp_path)['sessionId']}/stop",
        headers=stack.auth(),
    ).json()
    assert stopped["stopped"] is True
    base = f"{hub1.url}/api/jobs?machineId={machine_id}"
    page1 = httpx2.get(f"{base}&limit=3", headers=stack.auth()).json()
    assert [j["kind"] for j in page1["jobs"]] == ["stop", "spawn", "spawn"]
    assert page1["jobs"][0]["id"] == stopped["jobId"] and page1["nextCursor"]
    created = [j["createdAt"] for j in page1["jobs"]]
    assert created == sorted(created, reverse=True)
    page2 = httpx2.get(f"{base}&limit=3&cursor={page1['nextCursor']}", headers=stack.auth()).json()
    assert [j["kind"] for j in page2["jobs"]] == ["spawn", "spawn", "spawn"] and page2["nextCursor"] is None
    assert page2["jobs"][-1]["id"] == failed["jobId"]
    ok = httpx2.get(f"{base}&kind=spawn&state=succeeded&limit=3", headers=stack.auth()).json()["jobs"]
    assert [j["id"] for j in ok][1:] == spawns[::-1][:2]
    assert ok[1]["latencyMs"] == ok[1]["finishedAt"] - ok[1]["createdAt"] >= 0
    assert ok[1]["result"]["success"] is True and ok[1]["error"] is None
    bad = httpx2.get(f"{base}&state=failed", headers=stack.auth()).json()["jobs"]
    assert [(j["id"], j["code"]) for j in bad] == [(failed["jobId"], "not_a_directory")]
    unrecorded = httpx2.get(f"{base}&kind=paths", headers=stack.auth())  # path checks are not recorded
    assert (
        unrecorded.status_code == 400 and unrecorded.json()["detail"] == "kind must be one of spawn, stop - at `kind`"
    )
    everything = httpx2.get(f"{hub0.url}/api/jobs?limit=200", headers=stack.auth()).json()["jobs"]
    assert set(spawns) <= {j["id"] for j in everything}
    assert httpx2.get(base, headers=stack.auth("team")).status_code == 403
    assert httpx2.get(f"{hub0.url}/api/jobs?machineId=nobody-here", headers=stack.auth()).status_code == 404
    assert httpx2.get(f"{base}&limit=500", headers=stack.auth()).status_code == 400


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_metrics_after_a_known_sequence(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    hub = stack.start_hub()  # fresh counters
    stack.start_agent(machine_id)
    for path in ("/", "/tmp", "/nope"):
        check_paths(stack, hub, machine_id, path)
    r = httpx2.post(
        f"{hub.url}/api/machines/{machine_id}/spawn",
        headers=stack.auth(),
        json={"directory": str(tmp_path)},
        timeout=10,
    )
    assert r.json()["success"] is True
    text = httpx2.get(f"{hub.url}/metrics").text
    assert metric(text, 'machine_hub_job_roundtrip_seconds_count{kind="paths",outcome="succeeded"}') == 3
    assert metric(text, 'machine_hub_job_roundtrip_seconds_count{kind="spawn",outcome="succeeded"}') == 1
    assert metric(text, 'machine_hub_job_roundtrip_seconds_bucket{kind="spawn",le="+Inf",outcome="succeeded"}') == 1
    assert (
        metric(
            text,
            'machine_hub_http_requests_total{method="POST",route="/api/machines/{machine_id}/paths/exists",status="200"}',
        )
        == 3
    )
    assert metric(text, 'machine_hub_jobs_finished_total{state="succeeded"}') >= 1

    def counted_online() -> str | None:
        text = httpx2.get(f"{hub.url}/metrics").text
        return text if metric(text, "machine_hub_machines_online") >= 1 else None

    text = wait_until(counted_online, 10, "the worker to count the machine online")
    assert metric(text, "machine_hub_fleet_up") == 1
    # The fleet gauges come from Redis, so every hub reports them alike.
    fleet = [
        sorted(line for line in httpx2.get(f"{h.url}/metrics").text.splitlines() if "machines_" in line)
        for h in (hub, stack.hubs[0])
    ]
    assert fleet[0] == fleet[1]


def test_a_scrape_reads_no_keyspace_however_many_keys_redis_holds(stack: Stack) -> None:
    filler = f"unrelated-{uuid.uuid4().hex[:6]}"
    for start in range(0, 100_000, 10_000):
        stack.redis.mset({f"{filler}:{i}": b"x" for i in range(start, start + 10_000)})
    try:

        def calls() -> dict[str, int]:
            return {name: int(row["calls"]) for name, row in stack.redis.info("commandstats").items()}

        before = calls()
        for _ in range(5):
            assert metric(httpx2.get(f"{stack.hubs[0].url}/metrics").text, "machine_hub_fleet_up") == 1
        after = calls()
        walks = [
            c for c in after if c.split("|")[0] in ("cmdstat_scan", "cmdstat_keys", "cmdstat_hscan", "cmdstat_sscan")
        ]
        assert all(after[c] == before.get(c, 0) for c in walks), {c: after[c] for c in walks}
        assert (
            after.get("cmdstat_hgetall", 0) - before.get("cmdstat_hgetall", 0) <= 5
        )  # the counters, at most once a scrape
    finally:
        for start in range(0, 100_000, 10_000):
            stack.redis.unlink(*(f"{filler}:{i}" for i in range(start, start + 10_000)))


def test_an_open_stream_does_not_hold_up_shutdown(stack: Stack) -> None:
    hub = stack.start_hub()
    assert httpx2.get(f"{hub.url}/readyz").json() == {"ready": True}
    with events(hub.url, stack.auth()) as stream:
        started = time.monotonic()
        hub.signal(signal.SIGTERM)
        assert hub.popen.wait(8) == 0
        assert time.monotonic() - started < 5
        try:
            stream.next()
            raise AssertionError("the stream went on after the hub stopped")
        except (AssertionError, httpx2.TransportError) as exc:
            assert "went on" not in str(exc)


def test_readyz_follows_redis_and_livez_does_not(stack: Stack) -> None:
    hub = stack.hubs[0]
    assert httpx2.get(f"{hub.url}/livez").status_code == 200
    assert httpx2.get(f"{hub.url}/readyz").status_code == 200
    port, args = stack.redis_server.port, stack.redis_server.args
    stack.redis_server.kill()
    try:
        wait_until(lambda: httpx2.get(f"{hub.url}/readyz", timeout=5).status_code == 503, 10, "readyz 503")
        assert httpx2.get(f"{hub.url}/livez").status_code == 200
        assert httpx2.get(f"{hub.url}/readyz").json()["ready"] is False
        assert "machine_hub_fleet_up 0.0" in httpx2.get(f"{hub.url}/metrics", timeout=10).text
    finally:
        stack.redis_server = RedisServer(stack.redis_server.folder, port=port, args=args).start()
    wait_until(lambda: httpx2.get(f"{hub.url}/readyz", timeout=5).status_code == 200, 10, "readyz 200 again")
