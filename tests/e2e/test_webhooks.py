"""Webhooks end to end: real hubs, worker and agents, and a real receiver listening on loopback.

Each test uses a namespace of its own, so one test's events never reach another's receiver.
Retries are fast (MACHINE_HUB_WEBHOOK_RETRY_BASE_S 0.2 s), and loopback is allowed
(MACHINE_HUB_WEBHOOK_ALLOW_PRIVATE), as the settings let any deployment choose.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from machine_hub.redis_server import RedisServer, free_port
from tests.e2e.harness import Stack, fast_settings, wait_until
from tests.receiver import Receiver

TIMEOUT_S = 4.0


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = fast_settings(
        redis_server.url,
        webhook_allow_private=True,
        webhook_retry_base_s=0.2,
        webhook_retry_max_s=0.5,
        webhook_timeout_s=TIMEOUT_S,
    )
    stack = Stack(tmp_path_factory.mktemp("stack"), redis_server, settings)
    stack.hubs = [stack.start_hub()]
    stack.start_worker()
    yield stack
    stack.close()


@pytest.fixture
def ns() -> str:
    return f"wh-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()
    repeats = {d: n for d, n in r.successes().items() if n != 1}
    assert not repeats, f"deliveries a receiver acted on more than once: {repeats}"


def add_webhook(stack: Stack, ns: str, url: str, events: list[str]) -> dict[str, Any]:
    r = httpx2.post(f"{stack.hubs[0].url}/api/webhooks", headers=stack.auth(ns), json={"url": url, "events": events})
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


def deliveries(stack: Stack, ns: str, webhook_id: str) -> list[dict[str, Any]]:
    r = httpx2.get(f"{stack.hubs[0].url}/api/webhooks/{webhook_id}/deliveries", headers=stack.auth(ns))
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["deliveries"]
    return found


def spawn(stack: Stack, ns: str, machine_id: str, body: dict[str, Any]) -> dict[str, Any]:
    url = f"{stack.hubs[0].url}/api/machines/{machine_id}/spawn"
    answer: dict[str, Any] = httpx2.post(url, headers=stack.auth(ns), json=body, timeout=10).json()
    return answer


def test_job_outcomes_arrive_signed(stack: Stack, ns: str, machine_id: str, tmp_path: Path, receiver: Receiver) -> None:
    stack.start_agent(machine_id, ns)
    hook = add_webhook(stack, ns, receiver.url(), ["job.succeeded", "job.failed"])
    assert hook["secret"].startswith("whsec_")
    ok = spawn(stack, ns, machine_id, {"directory": str(tmp_path)})
    failed = spawn(stack, ns, machine_id, {"directory": str(tmp_path), "sessionType": "worktree", "worktreeName": "x"})
    assert ok["success"] is True and failed["code"] == "not_a_git_repo", (ok, failed)

    got = wait_until(lambda: len(receiver.on("/hook")) >= 2 and receiver.on("/hook"), 15, "two deliveries")
    by_event = {r.event: r for r in got}
    assert set(by_event) == {"job.succeeded", "job.failed"}
    for event, job in (("job.succeeded", ok), ("job.failed", failed)):
        item = by_event[event]
        assert item.signed_by(hook["secret"])
        assert not item.signed_by("whsec_another")
        body = item.json()
        assert body["id"] == item.delivery and body["id"].startswith(hook["id"] + ".")
        assert body["type"] == event and body["namespace"] == ns
        assert body["data"]["jobId"] == job["jobId"] and body["data"]["kind"] == "spawn"
        assert body["data"]["state"] == event.removeprefix("job.")
        assert item.headers["content-type"] == "application/json"
    assert by_event["job.failed"].json()["data"]["code"] == "not_a_git_repo"
    log = wait_until(lambda: len(deliveries(stack, ns, hook["id"])) >= 2 and deliveries(stack, ns, hook["id"]), 5)
    assert {(e["outcome"], e["status"], e["attempt"]) for e in log} == {("succeeded", 200, 1)}


def test_machines_coming_and_going(stack: Stack, ns: str, machine_id: str, receiver: Receiver) -> None:
    hook = add_webhook(stack, ns, receiver.url(), ["machine.online", "machine.offline"])
    agent = stack.start_agent(machine_id, ns)
    wait_until(lambda: [r.event for r in receiver.on("/hook")] == ["machine.online"], 15, "machine.online")
    assert agent.stop() == 0
    wait_until(lambda: len(receiver.on("/hook")) == 2, 15, "machine.offline")
    online, offline = receiver.on("/hook")
    assert offline.event == "machine.offline"
    for item, state in ((online, "online"), (offline, "offline")):
        assert item.signed_by(hook["secret"])
        assert item.json()["data"] == {"type": "machine", "machineId": machine_id, "state": state}


def test_a_receiver_that_is_down_gets_the_event_once_it_is_up(
    stack: Stack, ns: str, machine_id: str, tmp_path: Path
) -> None:
    port = free_port()
    stack.start_agent(machine_id, ns)
    hook = add_webhook(stack, ns, f"http://127.0.0.1:{port}/hook", ["job.succeeded"])
    assert spawn(stack, ns, machine_id, {"directory": str(tmp_path)})["success"] is True

    def refused() -> bool:
        return sum(e["error"] == "connection_failed" for e in deliveries(stack, ns, hook["id"])) >= 2

    wait_until(refused, 15, "attempts against a receiver that is down")
    receiver = Receiver(port=port)
    try:
        wait_until(lambda: receiver.successes(), 15, "the delivery once the receiver is up")
        log = wait_until(lambda: (d := deliveries(stack, ns, hook["id"]))[0]["outcome"] == "succeeded" and d, 5)
        assert len({e["deliveryId"] for e in log}) == 1
        assert [e["attempt"] for e in log] == list(range(len(log), 0, -1))
        assert all(e["outcome"] == "retrying" and e["nextAttemptAt"] > e["at"] for e in log[1:])
        assert list(receiver.successes().values()) == [1]
        assert receiver.on("/hook")[0].signed_by(hook["secret"])
    finally:
        receiver.close()


def test_a_receiver_answering_500_gets_it_again(
    stack: Stack, ns: str, machine_id: str, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.answers = [500, 500]
    stack.start_agent(machine_id, ns)
    hook = add_webhook(stack, ns, receiver.url(), ["job.succeeded"])
    assert spawn(stack, ns, machine_id, {"directory": str(tmp_path)})["success"] is True
    got = wait_until(lambda: len(receiver.on("/hook")) >= 3 and receiver.on("/hook"), 15, "three attempts")
    assert [r.status for r in got] == [500, 500, 200]
    assert len({r.delivery for r in got}) == 1 and len({r.body for r in got}) == 1
    assert all(r.signed_by(hook["secret"]) for r in got)
    log = wait_until(lambda: len(d := deliveries(stack, ns, hook["id"])) == 3 and d, 5)
    assert [(e["attempt"], e["status"], e["outcome"]) for e in log] == [
        (3, 200, "succeeded"),
        (2, 500, "retrying"),
        (1, 500, "retrying"),
    ]


def test_a_hung_receiver_never_slows_the_hub(
    stack: Stack, ns: str, machine_id: str, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.hold.set()
    stack.start_agent(machine_id, ns)
    add_webhook(stack, ns, receiver.url(), ["job.succeeded"])
    assert spawn(stack, ns, machine_id, {"directory": str(tmp_path)})["success"] is True
    wait_until(lambda: receiver.held, 15, "the receiver to hold a delivery")
    # While the delivery hangs, the hub answers (the spawn adds another delivery that hangs too).
    hub = stack.hubs[0].url
    assert httpx2.get(f"{hub}/api/machines", headers=stack.auth(ns), timeout=TIMEOUT_S).status_code == 200
    assert spawn(stack, ns, machine_id, {"directory": str(tmp_path)})["success"] is True
    assert httpx2.get(f"{hub}/api/webhooks", headers=stack.auth(ns), timeout=TIMEOUT_S).status_code == 200
    assert receiver.held, "the receiver let go before the hub answered: the check proved nothing"
    receiver.let_go()
    wait_until(lambda: len(receiver.successes()) == 2, 20, "both deliveries once the receiver answers")


def test_events_while_the_worker_is_down_are_delivered_when_it_is_back(
    stack: Stack, ns: str, machine_id: str, tmp_path: Path, receiver: Receiver
) -> None:
    stack.start_agent(machine_id, ns)
    add_webhook(stack, ns, receiver.url(), ["job.succeeded"])
    workers = [p for p in stack.processes if p.name.startswith("worker") and p.alive()]
    for worker in workers:
        assert worker.stop(20) == 0, worker.log_text()
    try:
        job = spawn(stack, ns, machine_id, {"directory": str(tmp_path)})
        assert job["success"] is True
    finally:
        stack.start_worker()
    got = wait_until(lambda: receiver.on("/hook"), 15, "the delivery after the restart")
    assert [r.json()["data"]["jobId"] for r in got] == [job["jobId"]]


def test_the_cli_adds_lists_and_removes_webhooks(stack: Stack, ns: str, receiver: Receiver) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        # With the hubs' own Redis user, as an operator may run it next to a hub.
        return subprocess.run(
            [sys.executable, "-m", "machine_hub", "webhook", *args],
            env=stack.role_env("hub"),
            capture_output=True,
            text=True,
            timeout=60,
        )

    added = cli("add", "--namespace", ns, receiver.url(), "--event", "job.failed", "--event", "machine.offline")
    assert added.returncode == 0, added.stderr
    secret = added.stdout.strip()
    assert secret.startswith("whsec_") and "cannot be shown again" in added.stderr
    listed = cli("list", "--namespace", ns)
    webhook_id = listed.stdout.split()[0]
    assert "job.failed,machine.offline" in listed.stdout and receiver.url() in listed.stdout
    assert secret not in listed.stdout
    api = httpx2.get(f"{stack.hubs[0].url}/api/webhooks", headers=stack.auth(ns)).json()["webhooks"]
    assert [(w["id"], w["events"]) for w in api] == [(webhook_id, ["job.failed", "machine.offline"])]
    refused = cli("add", "--namespace", ns, "ftp://example.com/x")
    assert refused.returncode == 2 and "http:// or https://" in refused.stderr
    assert cli("remove", "--namespace", ns, webhook_id).returncode == 0
    assert httpx2.get(f"{stack.hubs[0].url}/api/webhooks", headers=stack.auth(ns)).json() == {"webhooks": []}
    again = cli("remove", "--namespace", ns, webhook_id)
    assert again.returncode == 1 and "no webhook" in again.stderr
