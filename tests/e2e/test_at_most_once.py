"""Spawn runs at most once and every caller learns what happened, with each fault injected for real.

The fake CLI's records are the ground truth: one line per process that actually started.
"""

from __future__ import annotations

import signal
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis

from machine_hub.redis_server import RedisServer
from tests.e2e.harness import Stack, fast_settings, wait_until


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), args=("--enable-debug-command", "local")).start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # A spawn deadline long enough for a killed agent to be restarted and report before it.
    settings = fast_settings(redis_server.url, spawn_claim_timeout_s=2.0, spawn_timeout_s=8.0)
    stack = Stack(tmp_path_factory.mktemp("stack"), redis_server, settings)
    stack.hubs = [stack.start_hub(), stack.start_hub()]
    yield stack
    stack.close()


def launches_in(stack: Stack, directory: Path) -> list[dict[str, Any]]:
    return [launch for launch in stack.launches() if launch["cwd"] == str(directory)]


def post_spawn(stack: Stack, hub: int, machine_id: str, body: dict[str, Any], **headers: str) -> httpx2.Response:
    return httpx2.post(
        f"{stack.hubs[hub].url}/api/machines/{machine_id}/spawn",
        headers={**stack.auth(), **headers},
        json=body,
        timeout=30,
    )


def get_job(stack: Stack, hub: int, job_id: str, namespace: str | None = None) -> httpx2.Response:
    return httpx2.get(f"{stack.hubs[hub].url}/api/jobs/{job_id}", headers=stack.auth(namespace), timeout=10)


@pytest.mark.parametrize(
    ("failpoint", "code", "launched"),
    [("after_claim", "not_started", 0), ("after_intent", "outcome_unknown", 0), ("after_spawn", None, 1)],
)
def test_agent_killed_mid_spawn_reports_the_truth_after_restart(
    stack: Stack, machine_id: str, tmp_path: Path, failpoint: str, code: str | None, launched: int
) -> None:
    agent = stack.start_agent(machine_id, MACHINE_HUB_FAILPOINT=failpoint)
    answers: list[httpx2.Response] = []
    caller = threading.Thread(
        target=lambda: answers.append(post_spawn(stack, 0, machine_id, {"directory": str(tmp_path)}))
    )
    caller.start()
    assert agent.popen.wait(15) == -signal.SIGKILL, agent.log_text()
    stack.start_agent(machine_id)  # same id and home: it reads the journal its predecessor left
    caller.join(30)
    (answer,) = answers
    body = answer.json()
    assert answer.status_code == 200, body
    assert len(launches_in(stack, tmp_path)) == launched
    if code is None:
        assert body["success"] is True, body
        assert body["sessionId"] == launches_in(stack, tmp_path)[0]["env"]["MACHINE_HUB_SESSION_ID"]
    else:
        assert (body["success"], body["code"]) == (False, code), body
    job = get_job(stack, 1, body["jobId"]).json()
    assert job["state"] == ("succeeded" if code is None else "failed")
    assert job["result"]["success"] is (code is None)


def test_agent_paused_past_the_claim_deadline_never_runs_the_job(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    agent = stack.start_agent(machine_id)
    agent.signal(signal.SIGSTOP)
    try:
        body = post_spawn(stack, 0, machine_id, {"directory": str(tmp_path)}).json()
    finally:
        agent.signal(signal.SIGCONT)
    assert body["code"] == "not_started", body
    stack.wait_online("default", machine_id, agent)
    # The resumed agent pops the job id and must refuse it; give it a paths job to prove it is working.
    r = httpx2.post(
        f"{stack.hubs[1].url}/api/machines/{machine_id}/paths/exists",
        headers=stack.auth(),
        json={"paths": [str(tmp_path)]},
        timeout=10,
    )
    assert r.status_code == 200
    assert launches_in(stack, tmp_path) == []
    assert get_job(stack, 0, body["jobId"]).json()["state"] == "expired"


def test_redis_stalled_during_a_spawn_launches_once(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    stack.start_agent(machine_id)
    key = uuid.uuid4().hex
    body = {"directory": str(tmp_path)}
    staller = redis.Redis.from_url(stack.settings.redis_url, socket_timeout=10)
    stall = threading.Thread(target=lambda: staller.execute_command("DEBUG", "SLEEP", "2.5"))
    stall.start()
    first = post_spawn(stack, 0, machine_id, body, **{"Idempotency-Key": key})
    stall.join()
    staller.close()
    assert first.status_code in (200, 503), first.text
    # The stall outlived the heartbeat: a retry is definite only once the agent beats again.
    stack.wait_online("default", machine_id)

    def settled() -> dict[str, Any] | None:
        r = post_spawn(stack, 1, machine_id, body, **{"Idempotency-Key": key})
        answer: dict[str, Any] = r.json()
        return answer if r.status_code == 200 and answer.get("code") != "outcome_unknown" else None

    answer = wait_until(settled, 30, "a definite outcome for the idempotent spawn")
    assert answer["success"] is True, answer
    launches = launches_in(stack, tmp_path)
    assert len(launches) == 1
    assert launches[0]["env"]["MACHINE_HUB_SESSION_ID"] == answer["sessionId"]


def test_a_report_redis_stalled_on_is_sent_again_and_answers_the_caller(
    stack: Stack, machine_id: str, tmp_path: Path
) -> None:
    # The session settles for 2 s, and Redis stalls from its start until after the agent's report
    # timed out (as a failover would cut it). This hub waits a minute for the claim and the job and
    # asks Redis nothing meanwhile, so the caller hears the result in time only if the agent sent
    # its report again (not when the hub reads the record at its deadline).
    hub = stack.start_hub(MACHINE_HUB_SPAWN_CLAIM_TIMEOUT_S="60", MACHINE_HUB_SPAWN_TIMEOUT_S="60")
    stack.start_agent(machine_id, MACHINE_HUB_SPAWN_SETTLE_S="2")
    staller = redis.Redis.from_url(stack.settings.redis_url, socket_timeout=10)
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(
            httpx2.post,
            f"{hub.url}/api/machines/{machine_id}/spawn",
            headers=stack.auth(),
            json={"directory": str(tmp_path)},
            timeout=20,
        )
        wait_until(lambda: launches_in(stack, tmp_path), 10, "the session to start")
        seconds, micros = staller.time()
        staller.execute_command("DEBUG", "SLEEP", "4")
        response = answer.result()
    staller.close()
    body = response.json()
    assert response.status_code == 200 and body["success"] is True, body
    job = get_job(stack, 1, body["jobId"]).json()
    assert job["state"] == "succeeded"
    # The record says when the job ended (2 s into the stall), not when its report got through.
    assert job["finishedAt"] < seconds * 1000 + micros // 1000 + 4000, job
    assert len(launches_in(stack, tmp_path)) == 1
    hub.stop()


def test_hub_killed_while_waiting_the_job_completes_and_another_hub_shows_it(
    stack: Stack, machine_id: str, tmp_path: Path
) -> None:
    stack.start_agent(machine_id, MACHINE_HUB_SPAWN_SETTLE_S="2")
    doomed = stack.start_hub()
    errors: list[Exception] = []

    def call() -> None:
        try:
            httpx2.post(
                f"{doomed.url}/api/machines/{machine_id}/spawn",
                headers=stack.auth(),
                json={"directory": str(tmp_path)},
                timeout=30,
            )
        except httpx2.TransportError as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    launch = wait_until(lambda: launches_in(stack, tmp_path), 10, "the session to start")[0]
    doomed.kill()
    caller.join(10)
    assert errors, "the caller lost its hub mid-request"
    job_id = launch["env"]["MACHINE_HUB_JOB_ID"]

    def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = get_job(stack, 0, job_id).json()
        return job if job["state"] == "succeeded" else None

    job = wait_until(finished, 10, "the job to finish")
    assert job["result"]["sessionId"] == launch["env"]["MACHINE_HUB_SESSION_ID"]
    assert job["kind"] == "spawn" and job["machineId"] == machine_id
    assert job["createdAt"] <= job["claimedAt"] <= job["finishedAt"]


def test_one_idempotency_key_twenty_callers_two_hubs_one_launch(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    stack.start_agent(machine_id)
    key = uuid.uuid4().hex
    with ThreadPoolExecutor(20) as pool:
        answers = list(
            pool.map(
                lambda i: post_spawn(
                    stack, i % 2, machine_id, {"directory": str(tmp_path)}, **{"Idempotency-Key": key}
                ),
                range(20),
            )
        )
    bodies = [a.json() for a in answers]
    assert all(a.status_code == 200 for a in answers)
    assert all(b == bodies[0] for b in bodies), bodies
    assert bodies[0]["success"] is True
    assert len(launches_in(stack, tmp_path)) == 1


def test_idempotency_key_with_another_body_is_422(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    stack.start_agent(machine_id)
    key = {"Idempotency-Key": uuid.uuid4().hex}
    assert post_spawn(stack, 0, machine_id, {"directory": str(tmp_path)}, **key).json()["success"] is True
    r = post_spawn(stack, 1, machine_id, {"directory": str(tmp_path), "yolo": True}, **key)
    assert r.status_code == 422
    assert r.json() == {"error": "Idempotency-Key was already used with a different body"}
    assert len(launches_in(stack, tmp_path)) == 1


def test_job_lookup_is_namespace_checked(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    stack.start_agent(machine_id, "team")
    r = httpx2.post(
        f"{stack.hubs[0].url}/api/machines/{machine_id}/paths/exists",
        headers=stack.auth("team"),
        json={"paths": [str(tmp_path)]},
    )
    assert r.status_code == 200
    body = post_spawn(stack, 0, machine_id, {"directory": str(tmp_path)}).json() if False else None
    assert body is None
    spawn = httpx2.post(
        f"{stack.hubs[0].url}/api/machines/{machine_id}/spawn",
        headers=stack.auth("team"),
        json={"directory": str(tmp_path)},
        timeout=30,
    ).json()
    job_id = spawn["jobId"]
    assert get_job(stack, 1, job_id, "team").json()["state"] == "succeeded"
    assert get_job(stack, 1, job_id).status_code == 403
    assert get_job(stack, 1, job_id).json() == {"error": "Access denied"}
    for missing in (f"{machine_id}.{'0' * 32}", "nope.1234", "garbage", f"unknown-machine.{'a' * 32}"):
        r = get_job(stack, 0, missing, "team")
        assert r.status_code == 404 and r.json() == {"error": "Job not found"}, missing


def test_journal_prevents_a_second_launch_when_redis_forgot_the_key(
    stack: Stack, redis_server: RedisServer, machine_id: str, tmp_path: Path
) -> None:
    stack.start_agent(machine_id)
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = post_spawn(stack, 0, machine_id, {"directory": str(tmp_path)}, **key).json()
    assert first["success"] is True
    # Redis loses this namespace's memory of the key (as a failover or a restart without AOF would).
    for idem in stack.redis.scan_iter(stack.keys.idempotency("default", machine_id, "*")):
        stack.redis.delete(idem)
    again = post_spawn(stack, 1, machine_id, {"directory": str(tmp_path)}, **key).json()
    assert again["jobId"] != first["jobId"], "Redis no longer knew the key, so a new job was queued"
    assert again["success"] is True and again["sessionId"] == first["sessionId"], again
    assert len(launches_in(stack, tmp_path)) == 1


def test_an_unknown_outcome_becomes_final_when_the_agent_reports(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    # The session takes longer to settle than the hub waits, so the caller hears "unknown" first.
    settle_s = stack.settings.spawn_timeout_s + 1
    stack.start_agent(machine_id, MACHINE_HUB_SPAWN_SETTLE_S=str(settle_s))
    body = post_spawn(stack, 0, machine_id, {"directory": str(tmp_path)}).json()
    assert (body["success"], body["code"]) == (False, "outcome_unknown"), body
    assert get_job(stack, 1, body["jobId"]).json()["state"] == "unknown"

    def final() -> dict[str, Any] | None:
        job: dict[str, Any] = get_job(stack, 1, body["jobId"]).json()
        return job if job["state"] != "unknown" else None

    job = wait_until(final, settle_s + 5, "the agent's late report")
    assert job["state"] == "succeeded" and job["result"]["success"] is True
    assert len(launches_in(stack, tmp_path)) == 1
