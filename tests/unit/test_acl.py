"""The ACL rules of every role (core.acl): least privilege, checked against the key layout.

Integration tests run the same rules in a real redis-server (tests/security); here the rules
themselves are read: what a machine's patterns match, and what no role is ever granted.
"""

from __future__ import annotations

import fnmatch

import pytest

from core import acl
from core.keys import Keys

K = Keys("mh")
FORBIDDEN = {
    "keys", "scan", "randomkey", "flushall", "flushdb", "config", "acl", "debug", "shutdown", "monitor",
    "client", "script", "eval", "eval_ro", "function", "fcall", "migrate", "swapdb", "move", "select",
    "module", "save", "bgsave", "replicaof", "slaveof", "sync", "psync", "failover", "cluster",
}  # fmt: skip


def patterns(rules: list[str]) -> list[str]:
    return [r.split("~", 1)[1] for r in rules if "~" in r and not r.startswith("(")]


def granted(rules: list[str]) -> set[str]:
    return {r[1:] for r in rules if r.startswith("+")}


def test_a_machine_reaches_its_own_keys_and_no_other_machines() -> None:
    rules = acl.machine_rules(K, "team", "m1")
    mine = [K.heartbeat("team", "m1"), K.info("team", "m1"), K.mailbox("team", "m1"), K.job("team", "m1", "m1.j")]
    theirs = [
        K.heartbeat("team", "m10"),
        K.mailbox("team", "m"),
        K.job("other", "m1", "m1.j"),
        K.heartbeat("team2", "m1"),
        K.reg("team", "m1"),
        K.idempotency("team", "m1", "d"),
        K.owner("m1"),
        K.tokens("team"),
        K.machines("team"),
        K.events("team"),
        K.jobs("team"),
        K.stats(),
        K.sweep_due("online"),
    ]
    for key in mine:
        assert any(fnmatch.fnmatchcase(key, p) for p in patterns(rules)), key
    for key in theirs:
        assert not any(fnmatch.fnmatchcase(key, p) for p in patterns(rules)), key


def test_a_machine_may_only_push_onto_hub_inboxes_beyond_its_keys() -> None:
    selectors = [r for r in acl.machine_rules(K, "team", "m1") if r.startswith("(")]
    assert selectors == [f"(+lpush %W~{K.inbox_pattern()})"]
    assert fnmatch.fnmatchcase(K.inbox("0123456789abcdef"), K.inbox_pattern())


@pytest.mark.parametrize(
    "rules",
    [
        *(acl.machine_rules(K, "t", "m", cluster=c) for c in (False, True)),
        *(acl.service_rules(K, r, cluster=c) for r in acl.ROLES for c in (False, True)),
    ],
)
def test_no_role_gets_a_category_or_a_dangerous_command(rules: list[str]) -> None:
    assert rules[0] == "-@all"
    assert not [r for r in rules if r.startswith("+@")]
    assert not {g.split("|")[0] for g in granted(rules) if "|" not in g} & FORBIDDEN
    allowed = {"script|load", "script|exists", "cluster|slots", "cluster|shards", "cluster|nodes"}
    assert {g for g in granted(rules) if "|" in g} <= allowed


def test_only_a_database_other_than_0_grants_select() -> None:
    assert "+select" not in acl.machine_rules(K, "t", "m")
    assert "+select" in acl.machine_rules(K, "t", "m", db=2)


def test_user_names_cannot_collide() -> None:
    names = {acl.machine_user(K, "a.b", "c"), acl.machine_user(K, "a", "b.c"), acl.service_user(K, "hub")}
    assert len(names) == 3


WEBHOOK_KEYS = [
    K.webhooks("team"),
    K.webhook_deliveries("team", "wh_0123456789abcdef"),
    K.webhook_cursor("team"),
    K.webhook_namespaces(),
    K.webhook_lock(),
]


def test_no_machine_reaches_a_webhook_key() -> None:
    rules = acl.machine_rules(K, "team", "m1")
    for key in WEBHOOK_KEYS:
        assert not any(fnmatch.fnmatchcase(key, p) for p in patterns(rules)), key


def test_hubs_and_the_worker_reach_the_webhook_keys_their_work_needs() -> None:
    hub, worker = acl.service_rules(K, "hub"), acl.service_rules(K, "worker")
    for key in WEBHOOK_KEYS:
        assert any(fnmatch.fnmatchcase(key, p) for p in patterns(worker)), key
    for key in WEBHOOK_KEYS[:4]:  # everything but the feed's lease
        assert any(fnmatch.fnmatchcase(key, p) for p in patterns(hub)), key
    assert not any(fnmatch.fnmatchcase(K.webhook_lock(), p) for p in patterns(hub))
    assert f"%W~{K.webhook_namespaces()}" in hub  # hubs add namespaces to the set, never read it
    # The commands inside ADD_WEBHOOK (hub), LOG_DELIVERY and RENEW (worker), and the feed's XREAD.
    assert {"hlen", "hset", "set", "sadd", "lrange"} <= granted(hub)
    assert {"hexists", "lpush", "ltrim", "pexpire", "xread", "smembers"} <= granted(worker)
    assert not {g for g in granted(acl.service_rules(K, "tokens"))} & {"sadd", "xread", "lrange"}
