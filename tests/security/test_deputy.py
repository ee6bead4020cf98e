"""No confused deputy: hostile values in everything a machine may write move no key outside it.

A machine's user writes what it can (its heartbeat, metadata, mailbox, job records: reply
addresses, waiter lists, secrets, job ids naming others), then lets hubs and the worker act on
them: answer its jobs, sweep it offline, settle what it left. Every key outside the machine's own
is compared before and after; the only ones that may change are named below, with the reason.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx2
import msgspec
import redis

from core.keys import Keys, due_member, valid_hub_id
from core.schemas import Envelope
from tests.e2e.harness import Stack, wait_until
from tests.security.conftest import client_for


def snapshot(client: redis.Redis, prefix: str) -> dict[str, Any]:
    """Every key of the deployment with its type and contents (the test's own admin client)."""
    out: dict[str, Any] = {}
    for raw in client.scan_iter(match=f"{prefix}:*", count=1000):
        key = raw.decode()
        kind = client.type(key).decode()
        if key.endswith(":hb"):
            out[key] = kind  # other agents rewrite their heartbeats all along: only the kind must hold
        elif kind == "string":
            out[key] = client.get(key)
        elif kind == "hash":
            out[key] = client.hgetall(key)
        elif kind == "list":
            out[key] = client.lrange(key, 0, -1)
        elif kind == "set":
            out[key] = client.smembers(key)
        elif kind == "zset":
            out[key] = client.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            out[key] = [entry for entry in client.xrange(key)]
        else:
            out[key] = kind
    return out


SWEEP_DONE = ":sweep ●"  # arq's line for a sweep that ended


def worker_log(stack: Stack) -> str:
    return "".join(p.log_text() for p in stack.processes if p.name.startswith("worker"))


def may_change(key: str, keys: Keys, machine_id: str) -> bool:
    """What a machine's life may legitimately change outside its own keys."""
    inbox_prefix, inbox_suffix = f"{keys.prefix}:hub:{{", "}:inbox"
    if key.startswith(inbox_prefix) and key.endswith(inbox_suffix):
        return valid_hub_id(key[len(inbox_prefix) : -len(inbox_suffix)])  # answers, to real hub ids only
    return key in {
        keys.events("default"),  # its own machine and job events
        keys.jobs("default"),  # the hub indexes the jobs it sends it
        keys.stats(),  # fleet counters
        keys.sweep_due("online"),  # the worker's schedule of when to look at it
        keys.sweep_due("offline"),
        keys.sweep_lock(),
        f"{keys.prefix}:worker",  # arq's queue and health key
        f"{keys.prefix}:worker:health-check",
        f"{keys.prefix}:worker:webhooks:health-check",  # the deliveries queue's
    } or key.startswith(f"{keys.prefix}:rl:")


def test_hostile_values_a_machine_writes_change_nothing_outside_it(stack: Stack, machine_id: str) -> None:
    k = stack.keys
    neighbour, stranger = f"{machine_id}-b", f"{machine_id}-c"
    stack.start_agent(neighbour)
    stack.start_agent(stranger, "team")
    created = httpx2.post(
        f"{stack.hubs[0].url}/api/machines/{neighbour}/spawn",
        headers=stack.auth(),
        json={"directory": str(stack.tmp / "n")},
    ).json()
    assert created["success"] is True
    attacker = client_for(stack.machine_url("default", machine_id))
    own_base = k.machine_base("default", machine_id)
    instance = uuid.uuid4().hex

    # The attacker's machine is online, and a real spawn is sent to it, with an Idempotency-Key.
    attacker.set(k.heartbeat("default", machine_id), instance.encode() + b' {"ttlMs":60000}', px=60_000)
    attacker.set(
        k.info("default", machine_id), b'{"hostname":"<script>alert(1)</script>","platform":"x","version":"1"}'
    )
    online_line = f"machine {machine_id} in namespace default is online"
    wait_until(lambda: online_line in worker_log(stack), 10, "the worker's online mark")  # logged once it is done
    before = snapshot(stack.redis, k.prefix)

    hostile_names = [
        k.machines("default"),
        k.tokens("team"),
        k.owner(neighbour),
        k.heartbeat("default", neighbour),
        "not a key",
    ]
    spawn = _post_async(stack, machine_id, {"directory": "/tmp/x"}, {"Idempotency-Key": "k1"})
    popped = attacker.blmpop(5, 1, k.mailbox("default", machine_id), direction="RIGHT", count=1)
    job = msgspec.json.decode(popped[1][0], type=Envelope)
    # Its own job record, rewritten: the reply address, waiters and secret name other keys.
    record = msgspec.json.decode(attacker.get(k.job("default", machine_id, job.job_id)))
    record |= {"replyTo": hostile_names[0], "waiters": " ".join(hostile_names), "state": "queued"}
    attacker.set(k.job("default", machine_id, job.job_id), msgspec.json.encode(record), keepttl=True)
    # Its mailbox only hubs fill (it may not push there); it can make it the wrong type, though.
    assert refused_push(attacker, k.mailbox("default", machine_id))
    attacker.set(k.mailbox("default", machine_id), b"not a list")
    orphan = msgspec.json.encode(record | {"kind": "stop"})
    attacker.set(k.job("default", machine_id, f"{machine_id}.{'0' * 32}"), orphan)
    # A second caller with the same key joins the (now hostile) job; then the machine vanishes.
    again = _post_async(stack, machine_id, {"directory": "/tmp/x"}, {"Idempotency-Key": "k1"})
    attacker.set(k.heartbeat("default", machine_id), b"junk that is no heartbeat at all, but long enough", px=60_000)
    attacker.delete(k.heartbeat("default", machine_id))
    wait_until(lambda: stack.redis.hget(k.reg("default", machine_id), "state") == b"offline", 10, "the offline sweep")
    answers = [spawn.result(), again.result()]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    swept = worker_log(stack).count(SWEEP_DONE)
    wait_until(lambda: worker_log(stack).count(SWEEP_DONE) >= swept + 2, 20, "two more sweeps over what is left")

    after = snapshot(stack.redis, k.prefix)
    outside = {key for key in before.keys() | after.keys() if not key.startswith(own_base)}
    changed = sorted(key for key in outside if before.get(key) != after.get(key))
    assert [key for key in changed if not may_change(key, k, machine_id)] == []
    for key in hostile_names[:4]:
        assert before.get(key) == after.get(key), key
    # The neighbour's job is untouched by the envelope that named it.
    assert (
        httpx2.get(f"{stack.hubs[1].url}/api/jobs/{created['jobId']}", headers=stack.auth()).json()["state"]
        == "succeeded"
    )


def refused_push(client: redis.Redis, key: str) -> bool:
    try:
        client.lpush(key, b"x")
    except redis.exceptions.NoPermissionError:
        return True
    return False


def test_one_machine_with_broken_keys_does_not_stop_the_sweep_for_the_others(stack: Stack, machine_id: str) -> None:
    k = stack.keys
    attacker = client_for(stack.machine_url("default", machine_id))
    neighbour = stack.start_agent(f"{machine_id}-b")
    attacker.set(k.heartbeat("default", machine_id), uuid.uuid4().hex.encode() + b' {"ttlMs":60000}', px=60_000)
    wait_until(lambda: stack.redis.hget(k.reg("default", machine_id), "state") == b"online", 10, "online")
    attacker.set(k.mailbox("default", machine_id), b"not a list")  # the sweep's DRAIN would fail on it
    attacker.delete(k.heartbeat("default", machine_id))
    neighbour.kill()  # both go: the neighbour must still be found offline
    # The broken machine comes first in every pass (its look is due earliest).
    stack.redis.zadd(k.sweep_due("online"), {due_member("default", machine_id): 0})
    wait_until(
        lambda: stack.redis.hget(k.reg("default", f"{machine_id}-b"), "state") == b"offline",
        stack.settings.heartbeat_ttl_s + 10,
        "the neighbour's offline mark",
    )


def _post_async(stack: Stack, machine_id: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
    import concurrent.futures

    pool = concurrent.futures.ThreadPoolExecutor(1)
    return pool.submit(
        httpx2.post,
        f"{stack.hubs[0].url}/api/machines/{machine_id}/spawn",
        headers={**stack.auth(), **headers},
        json=body,
        timeout=30,
    )
