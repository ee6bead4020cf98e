"""What one machine's Redis URL is worth: its own jobs, and nothing else.

Each test holds a machine's URL, as a session on that machine could read it from the agent's
environment, and tries what an attacker would, against a real redis-server with the ACL users
`machine-hub machine add` and `setup` create.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from typing import Any

import httpx2
import msgspec
import pytest
import redis

from core.lua import SHA
from core.schemas import Envelope, JobKind, JobState, Reply
from tests.e2e.harness import Stack, wait_until
from tests.security.conftest import client_for


def refused(call: Any, *args: Any) -> bool:
    """True when Redis answers NOPERM (or the ACL's own refusal of a script's keys)."""
    try:
        call(*args)
    except redis.exceptions.NoPermissionError:
        return True
    except redis.exceptions.ResponseError as exc:
        return "no permissions" in str(exc) or "can't access" in str(exc)
    return False


@pytest.fixture
def pair(stack: Stack, machine_id: str) -> tuple[str, str, str]:
    """Three machines: the attacker's and one beside it in its namespace, one in another."""
    stack.machine_url("default", f"{machine_id}-b")
    stack.machine_url("team", f"{machine_id}-c")
    return machine_id, f"{machine_id}-b", f"{machine_id}-c"


def test_a_machine_reaches_no_key_but_its_own(stack: Stack, pair: tuple[str, str, str]) -> None:
    mine, neighbour, stranger = pair
    attacker = client_for(stack.machine_url("default", mine))
    k = stack.keys
    assert attacker.set(k.heartbeat("default", mine), b"x" * 40, px=1000) is True  # its own: fine
    assert attacker.get(k.info("default", mine)) is None
    others = [
        *(
            f(ns, m)
            for f in (k.heartbeat, k.info, k.mailbox, k.reg)
            for ns, m in (("default", neighbour), ("team", stranger))
        ),
        k.job("default", neighbour, f"{neighbour}.{'0' * 32}"),
        k.reg("default", mine),  # its own registration: written only by the admin and the worker
        k.idempotency("default", mine, "d"),
        k.owner(mine),  # its own ownership record included
        k.owner(neighbour),
        k.tokens("default"),
        k.tokens("team"),
        k.machines("default"),
        k.events("default"),
        k.jobs("default"),
        k.namespaces(),
        k.stats(),
        k.sweep_due("online"),
        k.sweep_lock(),
    ]
    for key in others:
        assert refused(attacker.get, key), key
        assert refused(attacker.set, key, "x"), key
        assert refused(attacker.delete, key), key
        assert refused(attacker.hset, key, "f", "v"), key
        assert refused(attacker.lpush, key, "x") or key.endswith(":inbox"), key
        assert refused(attacker.zadd, key, {"x": 1}), key
        assert refused(attacker.xadd, key, {"e": "x"}), key
        assert refused(attacker.execute_command, "BLMPOP", 0.01, 1, key, "RIGHT"), key


@pytest.mark.parametrize(
    "command",
    [
        ("SCAN", 0),
        ("KEYS", "*"),
        ("RANDOMKEY",),
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("CONFIG", "GET", "*"),
        ("CONFIG", "SET", "notify-keyspace-events", ""),
        ("ACL", "LIST"),
        ("ACL", "SETUSER", "evil", "on", ">x", "+@all", "~*"),
        ("DEBUG", "SLEEP", "0"),
        ("SHUTDOWN", "NOSAVE"),
        ("MONITOR",),
        ("CLIENT", "KILL", "TYPE", "normal"),
        ("CLIENT", "LIST"),
        ("SCRIPT", "FLUSH"),
        ("SCRIPT", "LOAD", "return 1"),
        ("EVAL", "while true do end", "0"),
        ("FUNCTION", "FLUSH"),
        ("FUNCTION", "LIST"),
        ("MIGRATE", "127.0.0.1", "1", "", "0", "1000", "KEYS", "x"),
        ("SWAPDB", "0", "1"),
        ("SELECT", "1"),
        ("PUBLISH", "c", "m"),
        ("SUBSCRIBE", "c"),
        ("INFO",),
        ("DBSIZE",),
    ],
)
def test_keyspace_wide_and_admin_commands_are_refused(stack: Stack, machine_id: str, command: tuple[Any, ...]) -> None:
    attacker = client_for(stack.machine_url("default", machine_id))
    assert refused(attacker.execute_command, *command), command
    assert stack.redis.ping()  # and Redis is still there for everyone


def test_a_machine_cannot_queue_work_on_another_machine(stack: Stack, pair: tuple[str, str, str]) -> None:
    mine, neighbour, _ = pair
    stack.start_agent(neighbour)
    attacker = client_for(stack.machine_url("default", mine))
    k = stack.keys
    envelope = msgspec.json.encode(
        Envelope(
            job_id=f"{neighbour}.{uuid.uuid4().hex}",
            kind=JobKind.SPAWN,
            args=msgspec.Raw(b'{"directory":"/tmp"}'),
            reply_to="0" * 16,
        )
    )
    assert refused(attacker.lpush, k.mailbox("default", neighbour), envelope)
    # Nor through a script the hubs loaded: Redis checks its keys against the caller's rules.
    hostile = [k.heartbeat("default", neighbour), k.reg("default", neighbour), k.mailbox("default", neighbour)]
    hostile += [k.job("default", neighbour, "x"), k.idempotency("default", neighbour, "-")]
    assert refused(attacker.evalsha, SHA["ENQUEUE"], len(hostile), *hostile, *([""] * 14))
    before = len(stack.launches())
    # The neighbour's agent takes its mailbox in order: once it has answered a later path check, it
    # has seen whatever got in ahead of it, and started nothing.
    checked = httpx2.post(
        f"{stack.hubs[0].url}/api/machines/{neighbour}/paths/exists", headers=stack.auth(), json={"paths": ["/"]}
    )
    assert checked.status_code == 200, checked.text
    assert len(stack.launches()) == before


def test_a_machine_cannot_read_another_machines_jobs_or_prompts(stack: Stack, pair: tuple[str, str, str]) -> None:
    mine, neighbour, _ = pair
    stack.start_agent(neighbour)
    prompt = f"the neighbour's secret plan {uuid.uuid4().hex}"
    r = httpx2.post(
        f"{stack.hubs[0].url}/api/machines/{neighbour}/spawn",
        headers=stack.auth(),
        json={"directory": str(stack.tmp / "plans"), "prompt": prompt},
        timeout=10,
    ).json()
    assert r["success"] is True, r
    attacker = client_for(stack.machine_url("default", mine))
    assert refused(attacker.get, stack.keys.job("default", neighbour, r["jobId"]))
    # Nobody keeps the prompt in Redis once the agent took it: only its size and digest.
    stored = stack.redis.get(stack.keys.job("default", neighbour, r["jobId"]))
    assert stored is not None and prompt.encode() not in stored
    assert hashlib.sha256(prompt.encode()).hexdigest().encode() in stored


def test_a_forged_reply_does_not_make_another_machines_job_look_finished(
    stack: Stack, pair: tuple[str, str, str]
) -> None:
    mine, neighbour, _ = pair
    victim = stack.start_agent(neighbour)
    attacker = client_for(stack.machine_url("default", mine))
    k = stack.keys
    hub = stack.hubs[0]
    # The attacker poses as its own machine's agent, and so learns the hub's inbox from a job.
    attacker.set(k.heartbeat("default", mine), uuid.uuid4().hex.encode() + b' {"ttlMs":60000}', px=60_000)

    def own_check() -> str:
        """A path check on the attacker's machine, answered by the attacker: the hub's inbox."""
        check, own_answer = _post_in_background(stack, f"{hub.url}/api/machines/{mine}/paths/exists", {"paths": ["/"]})
        popped = attacker.blmpop(5, 1, k.mailbox("default", mine), direction="RIGHT", count=1)
        own = msgspec.json.decode(popped[1][0], type=Envelope)
        # Answering its own machine's jobs is exactly what the credentials are for.
        result = msgspec.Raw(b'{"exists":{"/":false}}')
        reply = Reply(
            job_id=own.job_id, machine_id=mine, state=JobState.SUCCEEDED, result=result, secret=own.secret, origin=True
        )
        attacker.lpush(k.inbox(own.reply_to), msgspec.json.encode(reply))
        check.join(10)
        assert own_answer == {"exists": {"/": False}}
        return k.inbox(own.reply_to)

    inbox = own_check()

    victim.signal(19)  # SIGSTOP: the neighbour's spawn waits, the forgery arrives first
    spawn_url = f"{hub.url}/api/machines/{neighbour}/spawn"
    spawn, answer = _post_in_background(stack, spawn_url, {"directory": str(stack.tmp / "real")}, timeout=30)
    try:
        # Even knowing the job's id (a tenant could tell), the attacker does not know its secret.
        job_id = wait_until(lambda: _newest_job(stack, neighbour), 5, "the neighbour's job")
        forged = msgspec.Raw(b'{"success":true,"sessionId":"forged"}')
        for machine, secret in ((neighbour, ""), (neighbour, "0" * 32), (mine, "")):
            reply = Reply(
                job_id=job_id, machine_id=machine, state=JobState.SUCCEEDED, result=forged, secret=secret, origin=True
            )
            assert attacker.lpush(inbox, msgspec.json.encode(reply)) >= 1
        # The hub's reply reader takes its inbox in order: once a later answer is through, it has
        # weighed every forgery, before the neighbour's agent runs again.
        own_check()
        assert spawn.is_alive(), f"the hub took a forged reply: {answer}"
    finally:
        victim.signal(18)  # SIGCONT
    spawn.join(30)
    assert answer["success"] is True and answer["sessionId"] != "forged", answer
    stack.launched(answer["sessionId"])  # a real process started, by the real machine


def _post_in_background(
    stack: Stack, url: str, body: dict[str, Any], timeout: float = 10
) -> tuple[threading.Thread, dict[str, Any]]:
    """POST on a thread of its own (started); the dict holds the answer's JSON once it is joined."""
    answer: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: answer.update(httpx2.post(url, headers=stack.auth(), json=body, timeout=timeout).json())
    )
    thread.start()
    return thread, answer


def _newest_job(stack: Stack, machine_id: str) -> str | None:
    for raw in stack.redis.zrevrange(stack.keys.jobs("default"), 0, 5):
        job_id = raw.decode()
        if job_id.startswith(f"{machine_id}."):
            return job_id
    return None


def test_a_machine_cannot_mint_see_or_revoke_tokens(stack: Stack, machine_id: str) -> None:
    attacker = client_for(stack.machine_url("default", machine_id))
    forged = "mh_forged.default"
    digest = hashlib.sha256(forged.encode()).hexdigest()
    record = b'{"id":"' + digest[:12].encode() + b'","namespace":"default","createdMs":1}'
    assert refused(attacker.hset, stack.keys.tokens("default"), digest, record)
    assert refused(attacker.hgetall, stack.keys.tokens("team"))
    r = httpx2.get(f"{stack.hubs[0].url}/api/machines", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401


def test_hub_worker_and_token_users_have_no_admin_powers(stack: Stack) -> None:
    for role in ("hub", "worker", "tokens"):
        service = client_for(stack.urls[role])
        for command in (("ACL", "LIST"), ("CONFIG", "GET", "maxmemory"), ("FLUSHALL",), ("KEYS", "*"), ("SCAN", 0)):
            assert refused(service.execute_command, *command), (role, command)
    tokens = client_for(stack.urls["tokens"])
    assert refused(tokens.get, stack.keys.heartbeat("default", "any"))
    hub = client_for(stack.urls["hub"])
    assert refused(hub.hset, stack.keys.tokens("default"), "x", "y")  # hubs only read tokens
