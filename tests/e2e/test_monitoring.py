"""Monitoring through real hubs and agents: the event stream, listings, metrics, health, shutdown."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2

from machine_hub.redis_server import RedisServer
from tests.e2e.harness import SECRET, Process, Stack, wait_until


class EventStream:
    """An open GET /api/events, read event by event; every read is bounded by the client's timeout."""

    def __init__(self, response: httpx2.Response) -> None:
        self.response = response
        self.lines = response.iter_lines()
        self.seen: list[dict[str, Any]] = []

    def next(self) -> dict[str, Any]:
        event: dict[str, Any] = {}
        for line in self.lines:
            if line == "":
                if "data" in event:
                    self.seen.append(event)
                    return event
                event = {}
            elif line.startswith(":"):
                continue  # keep-alive
            else:
                name, _, value = line.partition(":")
                event[name] = value[1:] if value.startswith(" ") else value
        raise AssertionError("the event stream ended")

    def until(self, done: Callable[[dict[str, Any]], bool], timeout_s: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        got = []
        while time.monotonic() < deadline:
            event = self.next()
            got.append(event)
            if done(event):
                return got
        raise AssertionError(f"no matching event within {timeout_s}s; got {got}")


@contextmanager
def events(url: str, headers: dict[str, str] | None = None) -> Iterator[EventStream]:
    with (
        httpx2.Client(timeout=httpx2.Timeout(10.0)) as client,
        client.stream("GET", f"{url}/api/events", headers=headers or {}) as response,
    ):
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield EventStream(response)


def data(event: dict[str, Any]) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(event["data"])
    return decoded


def about(machine_id: str, **fields: str) -> Callable[[dict[str, Any]], bool]:
    def check(event: dict[str, Any]) -> bool:
        d = data(event)
        return d.get("machineId") == machine_id and all(d.get(k) == v for k, v in fields.items())

    return check


def check_paths(stack: Stack, hub: Process, machine_id: str, path: str) -> None:
    r = httpx2.post(
        f"{hub.url}/api/machines/{machine_id}/paths/exists", headers=stack.auth(), json={"paths": [path]}, timeout=10
    )
    assert r.status_code == 200, r.text


def test_events_resume_without_gaps_and_stay_in_their_namespace(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    hub0, hub1 = stack.hubs
    team_machine = f"{machine_id}-team"
    with events(hub0.url, stack.auth()) as first:
        stack.start_agent(machine_id)
        check_paths(stack, hub0, machine_id, str(tmp_path))
        check_paths(stack, hub1, machine_id, "/nope")
        seen = first.until(about(machine_id, type="machine", state="online"))
        seen += first.until(about(machine_id, type="job", kind="paths", state="succeeded"))
        seen += first.until(about(machine_id, type="job", kind="paths", state="succeeded"))
        assert all(e["event"] in ("machine", "job") for e in seen)
        assert seen[-1]["event"] == "job" and data(seen[-1])["type"] == "job"
    # Disconnected: one more job happens meanwhile.
    check_paths(stack, hub1, machine_id, "/tmp")
    resume_from = seen[0]["id"]
    with events(hub1.url, {**stack.auth(), "Last-Event-ID": resume_from}) as again:
        replay = again.until(lambda e: e["id"] == seen[-1]["id"])
        assert [e["id"] for e in replay] == [e["id"] for e in seen[1:]]
        assert [e["data"] for e in replay] == [e["data"] for e in seen[1:]]
        missed = again.until(about(machine_id, type="job", state="succeeded"))
        assert missed[-1]["id"] > seen[-1]["id"]
    # The same through the query parameters EventSource users need.
    url = f"{hub0.url}/api/events?token={SECRET}&lastEventId={resume_from}"
    with httpx2.Client(timeout=10) as c, c.stream("GET", url) as r:
        stream = EventStream(r)
        assert stream.next()["id"] == seen[1]["id"]
    # A team token sees only the team's events.
    with events(hub0.url, stack.auth("team")) as team, events(hub1.url, stack.auth()) as default:
        stack.start_agent(team_machine, "team")
        got = team.until(about(team_machine, type="machine", state="online"))
        check_paths(stack, hub0, machine_id, "/")
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
    for path in ("/", "/tmp", "/nope"):
        check_paths(stack, hub0, machine_id, path)
    r = httpx2.post(
        f"{hub0.url}/api/machines/{machine_id}/spawn",
        headers=stack.auth(),
        json={"directory": str(tmp_path)},
        timeout=10,
    )
    assert r.json()["success"] is True, r.text
    spawn_job = r.json()["jobId"]
    base = f"{hub1.url}/api/jobs?machineId={machine_id}"
    page1 = httpx2.get(f"{base}&limit=3", headers=stack.auth()).json()
    assert [j["kind"] for j in page1["jobs"]] == ["spawn", "paths", "paths"]
    assert page1["jobs"][0]["id"] == spawn_job and page1["nextCursor"]
    created = [j["createdAt"] for j in page1["jobs"]]
    assert created == sorted(created, reverse=True)
    page2 = httpx2.get(f"{base}&limit=3&cursor={page1['nextCursor']}", headers=stack.auth()).json()
    assert [j["kind"] for j in page2["jobs"]] == ["paths"] and page2["nextCursor"] is None
    spawns = httpx2.get(f"{base}&kind=spawn&state=succeeded", headers=stack.auth()).json()["jobs"]
    assert [j["id"] for j in spawns] == [spawn_job]
    assert spawns[0]["latencyMs"] == spawns[0]["finishedAt"] - spawns[0]["createdAt"] >= 0
    assert spawns[0]["result"]["success"] is True and spawns[0]["error"] is None
    assert len(httpx2.get(f"{base}&kind=paths", headers=stack.auth()).json()["jobs"]) == 3
    assert httpx2.get(f"{base}&state=failed", headers=stack.auth()).json()["jobs"] == []
    everything = httpx2.get(f"{hub0.url}/api/jobs?limit=200", headers=stack.auth()).json()["jobs"]
    assert spawn_job in [j["id"] for j in everything]
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
    assert metric(text, 'machine_hub_machines_online{namespace="default"}') >= 1
    assert metric(text, 'machine_hub_jobs_finished_total{namespace="default",state="succeeded"}') >= 4
    assert metric(text, "machine_hub_fleet_up") == 1
    # The fleet gauges come from Redis, so every hub reports them alike.
    fleet = [
        sorted(line for line in httpx2.get(f"{h.url}/metrics").text.splitlines() if "machines_" in line)
        for h in (hub, stack.hubs[0])
    ]
    assert fleet[0] == fleet[1]


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
    port = stack.redis_server.port
    stack.redis_server.kill()
    try:
        wait_until(lambda: httpx2.get(f"{hub.url}/readyz", timeout=5).status_code == 503, 10, "readyz 503")
        assert httpx2.get(f"{hub.url}/livez").status_code == 200
        assert httpx2.get(f"{hub.url}/readyz").json()["ready"] is False
        assert "machine_hub_fleet_up 0.0" in httpx2.get(f"{hub.url}/metrics", timeout=10).text
    finally:
        stack.redis_server = RedisServer(stack.redis_server.folder, port=port).start()
    wait_until(lambda: httpx2.get(f"{hub.url}/readyz", timeout=5).status_code == 200, 10, "readyz 200 again")
