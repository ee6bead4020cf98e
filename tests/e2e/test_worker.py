"""Two real worker processes sweeping for a real hub and agents: one outcome per fault."""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import time
from collections.abc import Iterator

import httpx2
import msgspec
import pytest

from core import events as event_codec
from core.connections import request_client
from core.events import MachineEvent
from core.keys import Keys
from core.lua import Scripts
from core.webhooks import WebhookStore
from machine_hub.redis_server import RedisServer
from tests.e2e.harness import Process, Stack, fast_settings, wait_until

SWEEP_S = 1.0


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Long claim deadlines: a hub still waits for a spawn when its machine goes away.
    settings = fast_settings(
        redis_server.url,
        sweep_interval_s=SWEEP_S,
        worker_health_check_interval_s=1.0,
        spawn_claim_timeout_s=30.0,
        spawn_timeout_s=40.0,
    )
    stack = Stack(tmp_path_factory.mktemp("stack"), redis_server, settings)
    stack.hubs = [stack.start_hub()]  # and no worker: the tests start two of their own
    yield stack
    stack.close()


@pytest.fixture(scope="module")
def workers(stack: Stack) -> list[Process]:
    started = [stack.start_worker(f"worker-{i}") for i in range(2)]
    health = f"{stack.settings.key_prefix}:worker:health-check"

    def up() -> bool:
        for worker in started:
            if not worker.alive():
                raise AssertionError(f"worker exited:\n{worker.log_text()}")
        return all("Starting worker" in w.log_text() for w in started) and bool(stack.redis.exists(health))

    wait_until(up, 20, "both workers to start")
    return started


def _events_after(stack: Stack, namespace: str, after: str) -> list[event_codec.Event]:
    entries = stack.redis.xrange(stack.keys.events(namespace), min=f"({after}" if after != "0-0" else "-")
    return [event_codec.decode(fields[b"e"]) for _id, fields in entries]


def _last_event_id(stack: Stack, namespace: str) -> str:
    newest = stack.redis.xrevrange(stack.keys.events(namespace), count=1)
    return newest[0][0].decode() if newest else "0-0"


def _sweeps_done(stack: Stack) -> int:
    return sum(1 for _ in stack.redis.scan_iter(match=f"arq:result:{stack.settings.key_prefix}:sweep:*"))


def _state(stack: Stack, machine_id: str) -> str | None:
    value = stack.redis.hget(stack.keys.reg("default", machine_id), "state")
    return value.decode() if value is not None else None


def test_a_killed_agent_goes_offline_once(stack: Stack, workers: list[Process], machine_id: str) -> None:
    agent = stack.start_agent(machine_id)
    wait_until(lambda: _state(stack, machine_id) == "online", 10, "the machine to be online")
    after = _last_event_id(stack, "default")

    agent.popen.send_signal(signal.SIGKILL)
    agent.popen.wait()
    killed = time.monotonic()
    wait_until(lambda: _state(stack, machine_id) == "offline", 10, "the sweep to mark the machine offline")
    took = time.monotonic() - killed

    assert took < stack.settings.heartbeat_ttl_s + SWEEP_S + 2.0
    assert not stack.redis.exists(stack.keys.heartbeat("default", machine_id))
    # Later sweeps, by either worker, change nothing.
    done = _sweeps_done(stack)
    wait_until(lambda: _sweeps_done(stack) >= done + 2, 10, "two more sweeps")
    offline = [
        e
        for e in _events_after(stack, "default", after)
        if isinstance(e, MachineEvent) and e.machine_id == machine_id and e.state == "offline"
    ]
    assert offline == [MachineEvent(machine_id=machine_id, state="offline")]
    assert _state(stack, machine_id) == "offline"


def test_a_spawn_for_a_paused_agent_fails_as_soon_as_the_machine_is_offline(
    stack: Stack, workers: list[Process], machine_id: str
) -> None:
    # A heartbeat that outlives the pause by a few seconds, so the spawn is queued, not refused.
    agent = stack.start_agent(machine_id, MACHINE_HUB_HEARTBEAT_TTL_S="3")
    hub = stack.hubs[0]
    try:
        agent.signal(signal.SIGSTOP)
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            answer = pool.submit(
                httpx2.post,
                f"{hub.url}/api/machines/{machine_id}/spawn",
                json={"directory": "/tmp"},
                headers=stack.auth(),
                timeout=60,
            ).result(timeout=60)
        took = time.monotonic() - started

        assert answer.status_code == 200
        body = answer.json()
        assert body["success"] is False
        assert body["code"] == "machine_offline"
        assert body["error"] == f"Machine {machine_id} went offline"  # the sweep's answer, not enqueue's
        assert took < stack.settings.spawn_claim_timeout_s / 2
        record = msgspec.json.decode(stack.redis.get(stack.keys.job("default", machine_id, body["jobId"])))
        assert record["state"] == "failed"
        assert msgspec.json.decode(record["result"])["code"] == "machine_offline"
        assert _state(stack, machine_id) == "offline"
    finally:
        agent.kill()  # SIGKILL ends a stopped process too
    assert not [x for x in stack.launches() if x["env"].get("MACHINE_HUB_MACHINE_ID") == machine_id]


def test_workers_stop_cleanly_on_sigterm(stack: Stack, workers: list[Process]) -> None:
    for worker in workers:
        assert worker.stop(15) == 0, worker.log_text()
    assert not stack.redis.exists(f"{stack.settings.key_prefix}:worker:health-check")


async def _webhook(stack: Stack, ns: str, *, remove: str = "") -> str:
    redis = request_client(stack.settings)
    try:
        store = WebhookStore(redis, Keys(stack.settings.key_prefix), Scripts(redis, can_load=True))
        if remove:
            await store.remove(ns, remove)
            return remove
        return (await store.create(ns, "https://example.com/hook", ["machine.offline"], limit=10)).id
    finally:
        await redis.aclose()


def test_a_worker_stops_at_once_however_long_its_reads_block(stack: Stack) -> None:
    # Its notifications listener waited a whole block_s for a message before it looked at the stop,
    # and its webhook feed waits that long in XREAD (a namespace with a webhook makes it read): up
    # to 10 s by default, which `machine-hub dev` waited out on Ctrl-C. It runs after the module's
    # workers stopped: the feed's reader is whoever holds its lease.
    webhook = asyncio.run(_webhook(stack, "stop-test"))
    try:
        worker = stack.start_worker("worker-long-blocks", wait=False, MACHINE_HUB_BLOCK_S="60")
        # Its own start, not the health key: the module's other workers share that key.
        wait_until(lambda: "this worker reads the event streams" in worker.log_text(), 30, "its feed to read")
        started = time.monotonic()
        assert worker.stop(30) == 0, worker.log_text()
        assert time.monotonic() - started < 20, "the worker sat out its blocking reads"
    finally:
        asyncio.run(_webhook(stack, "stop-test", remove=webhook))
