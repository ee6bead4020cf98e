"""Delivery signatures (core.signatures): HMAC-SHA256 over `<timestamp>.<body>`, as receivers check it."""

from __future__ import annotations

import hashlib
import hmac

from core.signatures import new_secret, sign, verify

SECRET = "whsec_test"
BODY = b'{"id":"wh_0123456789abcdef.1-0","type":"job.failed"}'


def test_the_signature_is_the_hmac_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1_700_000_000, BODY) == f"sha256={expected}"


def test_a_receiver_accepts_only_the_exact_body_timestamp_and_secret() -> None:
    good = sign(SECRET, 1_700_000_000, BODY)
    assert verify(SECRET, "1700000000", good, BODY, now_s=1_700_000_010)
    assert not verify(SECRET, "1700000000", good, BODY + b" ", now_s=1_700_000_010)
    assert not verify(SECRET, "1700000001", good, BODY, now_s=1_700_000_010)
    assert not verify("whsec_other", "1700000000", good, BODY, now_s=1_700_000_010)
    assert not verify(SECRET, "1700000000", good.removeprefix("sha256="), BODY, now_s=1_700_000_010)


def test_a_replay_older_than_the_tolerance_is_refused() -> None:
    good = sign(SECRET, 1_700_000_000, BODY)
    assert verify(SECRET, "1700000000", good, BODY, now_s=1_700_000_300)
    assert not verify(SECRET, "1700000000", good, BODY, now_s=1_700_000_301)
    assert not verify(SECRET, "-1", good, BODY, now_s=1_700_000_000)


def test_secrets_are_new_and_long() -> None:
    secrets = {new_secret() for _ in range(50)}
    assert len(secrets) == 50
    assert all(s.startswith("whsec_") and len(s) >= 40 for s in secrets)
