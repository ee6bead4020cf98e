"""Issued bearer tokens on a real Redis, and the shared-secret rule."""

from __future__ import annotations

import hashlib
import time

import pytest
from redis.asyncio import Redis

from core.keys import Keys
from core.tokens import DEFAULT_NAMESPACE, TOKEN_PREFIX, TokenStore, shared_secret_namespace

NS = "team"
OTHER_NS = "other"


@pytest.fixture
def store(redis: Redis, keys: Keys) -> TokenStore:
    return TokenStore(redis, keys)


async def _stored_bytes(redis: Redis, keys: Keys) -> list[bytes]:
    """Every key under the test's prefix and every value those keys hold."""
    found: list[bytes] = []
    async for key in redis.scan_iter(match=f"{keys.prefix}:*", count=1000):
        found.append(key)
        kind = (await redis.type(key)).decode()
        if kind == "string":
            found.append(await redis.get(key))
        elif kind == "hash":
            for field, value in (await redis.hgetall(key)).items():
                found += [field, value]
        elif kind == "set":
            found += list(await redis.smembers(key))
        elif kind == "list":
            found += list(await redis.lrange(key, 0, -1))
        else:
            raise AssertionError(f"unexpected key type {kind} for {key!r}")
    return found


async def test_create_returns_a_prefixed_token_for_the_namespace(store: TokenStore) -> None:
    new = await store.create(NS)

    assert new.token.startswith(TOKEN_PREFIX)
    assert len(new.token) > len(TOKEN_PREFIX) + 32
    assert new.record.namespace == NS
    assert await store.namespace_of(new.token) == NS
    assert await store.namespace_of(TOKEN_PREFIX + "not-issued") is None
    assert (await store.create(NS)).token != new.token


async def test_redis_stores_only_the_sha256_of_a_token(store: TokenStore, redis: Redis, keys: Keys) -> None:
    new = await store.create(NS)
    sha = hashlib.sha256(new.token.encode()).hexdigest()

    stored = await _stored_bytes(redis, keys)

    assert stored, "the token must be stored somewhere under the prefix"
    secret_part = new.token.removeprefix(TOKEN_PREFIX).partition(".")[0].encode()
    for item in stored:
        assert new.token.encode() not in item
        assert secret_part not in item
    assert keys.tokens(NS).encode() in stored and sha.encode() in stored
    assert new.record.id == sha[:12]


async def test_what_works_is_exactly_what_is_listed_however_the_hash_was_touched(
    store: TokenStore, redis: Redis, keys: Keys
) -> None:
    good, other = await store.create(NS), await store.create(OTHER_NS)
    # Hand-made entries: a record under another namespace's hash, a forged id, junk.
    forged = f"{TOKEN_PREFIX}forged.{NS}"
    await redis.hset(keys.tokens(NS), hashlib.sha256(other.token.encode()).hexdigest(), b"x")
    await redis.hset(
        keys.tokens(NS),
        hashlib.sha256(forged.encode()).hexdigest(),
        b'{"id":"000000000000","namespace":"team","createdMs":1}',
    )
    await redis.hset(keys.tokens(NS), "junk", b"{not json")
    assert [r.id for r in await store.issued(NS)] == [good.record.id]
    assert await store.namespace_of(forged) is None
    assert await store.namespace_of(other.token) == OTHER_NS  # only through its own namespace's hash
    assert await store.revoke(NS, good.record.id)
    assert await store.namespace_of(good.token) is None and await store.issued(NS) == []


async def test_a_token_names_its_namespace_and_old_tokens_do_not_work(store: TokenStore) -> None:
    new = await store.create(NS)
    assert new.token.endswith(f".{NS}") and "." not in new.token.removeprefix(TOKEN_PREFIX)[: -len(NS) - 1]
    assert await store.namespace_of(TOKEN_PREFIX + "x" * 43) is None
    assert await store.namespace_of(new.token.removesuffix(NS) + OTHER_NS) is None


async def test_issued_lists_tokens_with_id_and_created_time(store: TokenStore) -> None:
    before_ms = int(time.time() * 1000)
    first = await store.create(NS)
    second = await store.create(NS)
    after_ms = int(time.time() * 1000)
    await store.create(OTHER_NS)

    issued = await store.issued(NS)

    assert {t.id for t in issued} == {first.record.id, second.record.id}
    assert all(t.namespace == NS for t in issued)
    assert all(before_ms <= t.created_ms <= after_ms for t in issued)
    assert [t.created_ms for t in issued] == sorted(t.created_ms for t in issued)
    assert first.record in issued
    assert await store.issued("empty") == []


async def test_revoke_by_id(store: TokenStore) -> None:
    new = await store.create(NS)
    kept = await store.create(NS)

    assert await store.revoke(NS, new.record.id)

    assert await store.namespace_of(new.token) is None
    assert await store.namespace_of(kept.token) == NS
    assert [t.id for t in await store.issued(NS)] == [kept.record.id]


async def test_revoke_by_the_token_itself(store: TokenStore) -> None:
    new = await store.create(NS)

    assert await store.revoke(NS, new.token)

    assert await store.namespace_of(new.token) is None
    assert await store.issued(NS) == []
    assert not await store.revoke(NS, new.token), "a revoked token cannot be revoked again"


async def test_revoke_of_an_unknown_token_returns_false(store: TokenStore) -> None:
    assert not await store.revoke(NS, "0123456789ab")
    assert not await store.revoke(NS, TOKEN_PREFIX + "never-issued")


async def test_revoke_only_acts_within_its_namespace(store: TokenStore) -> None:
    new = await store.create(OTHER_NS)

    assert not await store.revoke(NS, new.record.id)
    assert not await store.revoke(NS, new.token)

    assert await store.namespace_of(new.token) == OTHER_NS


@pytest.mark.parametrize(
    ("bearer", "secret", "expected"),
    [
        ("S", "S", DEFAULT_NAMESPACE),
        ("S:team", "S", "team"),
        ("S:", "S", None),
        (":team", "S", None),
        ("S: team", "S", None),
        ("S:bad/ns", "S", None),
        ("X", "S", None),
        ("X:team", "S", None),
        ("S:team:x", "S", None),
        ("a:b", "a:b", DEFAULT_NAMESPACE),
        ("a:b:team", "a:b", "team"),
        ("", "", None),
        (":team", "", None),
        ("anything", "", None),
    ],
)
def test_shared_secret_namespace(bearer: str, secret: str, expected: str | None) -> None:
    assert shared_secret_namespace(bearer, secret) == expected
