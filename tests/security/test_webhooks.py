"""What one machine's Redis URL can do to webhooks: nothing. Their URLs and signing secrets, their
delivery logs, the feed's cursors and lease are out of its reach, directly and through scripts."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest
import redis

from core.lua import SHA
from tests.e2e.harness import Stack
from tests.security.conftest import client_for
from tests.security.test_machine_credentials import refused


@pytest.fixture
def webhook_id(stack: Stack) -> Iterator[str]:
    # A host that never resolves (.invalid is reserved), removed afterwards: nothing is ever sent.
    hub = stack.hubs[0].url
    r = httpx2.post(
        f"{hub}/api/webhooks", headers=stack.auth(), json={"url": "https://hooks.invalid/mh", "events": ["job.failed"]}
    )
    assert r.status_code == 201, r.text
    hook_id: str = r.json()["id"]
    yield hook_id
    httpx2.delete(f"{hub}/api/webhooks/{hook_id}", headers=stack.auth())


def test_a_machine_cannot_read_or_change_webhooks(stack: Stack, machine_id: str, webhook_id: str) -> None:
    attacker = client_for(stack.machine_url("default", machine_id))
    k = stack.keys
    hooks, log, cursor = k.webhooks("default"), k.webhook_deliveries("default", webhook_id), k.webhook_cursor("default")
    attempts = [
        (attacker.hgetall, hooks),
        (attacker.hget, hooks, webhook_id),
        (attacker.hset, hooks, "wh_0000000000000000", '{"url":"http://169.254.169.254/"}'),
        (attacker.hdel, hooks, webhook_id),
        (attacker.delete, hooks),
        (attacker.lrange, log, 0, -1),
        (attacker.lpush, log, "{}"),
        (attacker.get, cursor),
        (attacker.set, cursor, "0-0"),  # would replay the namespace's events to its webhooks
        (attacker.smembers, k.webhook_namespaces()),
        (attacker.sadd, k.webhook_namespaces(), "evil"),
        (attacker.set, k.webhook_lock(), "mine"),  # would stop every delivery
        (attacker.get, k.webhook_lock()),
        (attacker.xread, {k.events("default"): "0-0"}),
    ]
    for call, *args in attempts:
        assert refused(call, *args), (call.__name__, args)
    # Nor through the scripts the hubs and the worker loaded: Redis checks their keys against the caller.
    assert refused(attacker.evalsha, SHA["ADD_WEBHOOK"], 2, hooks, cursor, 99, "wh_1111111111111111", "{}", "0-0")
    assert refused(attacker.evalsha, SHA["LOG_DELIVERY"], 2, hooks, log, webhook_id, "{}", 100)
    assert refused(attacker.evalsha, SHA["RENEW"], 1, k.webhook_lock(), "x", 600_000)
    # The webhook is as it was.
    stored = stack.redis.hgetall(hooks)
    assert webhook_id.encode() in stored and b"169.254" not in stored[webhook_id.encode()]


def test_the_token_command_cannot_touch_webhooks(stack: Stack, webhook_id: str) -> None:
    tokens = redis.Redis.from_url(stack.urls["tokens"], socket_timeout=5)
    assert refused(tokens.hgetall, stack.keys.webhooks("default"))
    assert refused(tokens.sadd, stack.keys.webhook_namespaces(), "evil")
