"""The key layout (docs/design.md, "Keys"): one hash tag per machine, names read back only when valid."""

from __future__ import annotations

import re

import pytest

from core.keys import Keys, parse_due_member, valid_job_id, valid_prefix

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
        K.job("team", "m1", "m1.j"),
        K.reg("team", "m1"),
        K.idempotency("team", "m1", "d"),
    ]
    assert {tag(k) for k in keys} == {"team:m1"}


def test_namespace_and_hub_keys_have_their_own_tags() -> None:
    assert {tag(K.machines("team")), tag(K.events("team")), tag(K.jobs("team")), tag(K.tokens("team"))} == {"team"}
    assert tag(K.inbox("0123456789abcdef")) == "0123456789abcdef"


@pytest.mark.parametrize("bad", ["", "x:y", "a*", "a b", "{h}", "..", "0123456789abcdeg", "0123456789ABCDEF"])
def test_an_inbox_is_only_ever_named_by_a_hub_id(bad: str) -> None:
    with pytest.raises(ValueError):
        K.inbox(bad)


@pytest.mark.parametrize("prefix", ["", "a:b", "a*", "a~b", "x" * 33, "-a", "a b"])
def test_a_prefix_cannot_break_acl_patterns_or_user_names(prefix: str) -> None:
    assert not valid_prefix(prefix)
    with pytest.raises(ValueError):
        Keys(prefix)


def test_heartbeat_channels_parse_back_to_the_machine_and_nothing_else() -> None:
    channel = f"__keyspace@0__:{K.heartbeat('team', 'm-1.x')}"
    assert K.parse_heartbeat_channel(channel) == ("team", "m-1.x")
    for other in (K.mailbox("team", "m1"), "mh:m:{team}:hb", "mh:m:{a:b:c}:hb", "other:m:{team:m1}:hb", "x"):
        assert K.parse_heartbeat_channel(f"__keyspace@0__:{other}") is None


def test_job_ids_and_due_members_are_checked_before_use() -> None:
    assert valid_job_id("m1." + "a" * 32, "m1")
    assert not valid_job_id("m2." + "a" * 32, "m1")
    assert not valid_job_id("m1." + "a" * 31, "m1")
    assert not valid_job_id("m1.:hb" + "a" * 29, "m1")
    assert parse_due_member("team:m1") == ("team", "m1")
    assert parse_due_member("team") is None and parse_due_member("t*:m") is None


def test_a_namespaces_webhook_keys_share_its_tag() -> None:
    hook = "wh_0123456789abcdef"
    keys = [K.webhooks("team"), K.webhook_deliveries("team", hook), K.webhook_cursor("team"), K.events("team")]
    assert {tag(k) for k in keys} == {"team"}  # ADD_WEBHOOK and LOG_DELIVERY stay in one slot
    assert tag(K.webhook_namespaces()) == tag(K.webhook_lock()) == "webhooks"


@pytest.mark.parametrize("bad", ["", "wh_", "wh_0123456789abcde", "wh_0123456789ABCDEF", "wh_0123456789abcdef:x", "*"])
def test_a_delivery_log_is_only_named_by_a_webhook_id(bad: str) -> None:
    with pytest.raises(ValueError):
        K.webhook_deliveries("team", bad)
