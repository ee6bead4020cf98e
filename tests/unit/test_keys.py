"""The key layout promises of DESIGN §3: hash tags per machine and per hub, namespace confinement."""

from __future__ import annotations

import re

from core.keys import Keys

K = Keys("mh")


def tag(key: str) -> str:
    match = re.search(r"\{([^}]*)\}", key)
    assert match, key
    return match.group(1)


def test_a_machines_keys_share_one_hash_tag() -> None:
    keys = [
        K.heartbeat("team", "m1"),
        K.info("team", "m1"),
        K.mailbox("team", "m1"),
        K.job("team", "m1", "j"),
        K.waiters("team", "m1", "j"),
        K.idempotency("team", "m1", "d"),
    ]
    assert {tag(k) for k in keys} == {"team:m1"}


def test_a_hubs_inboxes_share_one_hash_tag_across_namespaces() -> None:
    assert tag(K.inbox("a", "h1")) == tag(K.inbox("b", "h1")) == tag(K.hub_wake("h1")) == "hub:h1"


def test_every_key_an_agent_writes_is_under_its_namespace() -> None:
    agent_keys = [
        K.heartbeat("team", "m1"),
        K.info("team", "m1"),
        K.mailbox("team", "m1"),
        K.job("team", "m1", "j"),
        K.waiters("team", "m1", "j"),
        K.machines("team"),
        K.inbox("team", "h1"),
    ]
    assert all(k.startswith("mh:ns:team:") for k in agent_keys)


def test_namespaces_do_not_prefix_each_other() -> None:
    assert not K.machines("team-2").startswith("mh:ns:team:")
