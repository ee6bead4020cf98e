"""Limits as logic: the rate-limit script (fakeredis runs its Lua), the shared secret's
namespaces, the error bodies and the settings. Against real processes: tests/e2e/test_limits.py."""

from __future__ import annotations

import fakeredis
import pytest
from starlette.testclient import TestClient

from api.app import create_app
from api.errors import error_response
from core.errors import RateLimited, RequestTimeout, SettingsError
from core.ratelimits import WINDOW_MS, RateLimiter
from core.settings import Settings
from core.tokens import shared_secret_namespace
from tests.unit.conftest import SECRET
from tests.unit.test_monitoring import settings_dict


@pytest.fixture
def limiter() -> RateLimiter:
    return RateLimiter(fakeredis.FakeAsyncRedis(), "t")


async def test_a_full_token_refuses_without_using_the_namespace_budget(limiter: RateLimiter) -> None:
    a = limiter.spawn_limits("ns", "token-a", per_namespace=3, per_token=2)
    b = limiter.spawn_limits("ns", "token-b", per_namespace=3, per_token=2)
    assert await limiter.take(a) is None
    assert await limiter.take(a) is None
    for _ in range(5):
        refusal = await limiter.take(a)
        assert refusal is not None and refusal.limit.name == "spawns_per_minute_token"
        assert 1 <= refusal.retry_after_s <= WINDOW_MS // 1000
    assert await limiter.take(b) is None  # a's refusals counted nowhere
    refusal = await limiter.take(b)
    assert refusal is not None and refusal.limit.name == "spawns_per_minute_namespace"
    other = limiter.spawn_limits("other-ns", "token-a", per_namespace=3, per_token=2)
    assert await limiter.take(other) is None  # counters are per namespace


async def test_counters_expire_with_their_window(limiter: RateLimiter) -> None:
    limits = limiter.spawn_limits("ns", "tok", per_namespace=1, per_token=0)
    assert await limiter.take(limits) is None
    ttl = await limiter.redis.pttl(limits[0].key)
    assert 0 < ttl <= WINDOW_MS
    assert not await limiter.redis.exists(limits[1].key)  # a limit of 0 is off and keeps no counter
    await limiter.redis.delete(limits[0].key)  # as when the window ends
    assert await limiter.take(limits) is None


async def test_a_counter_without_expiry_heals(limiter: RateLimiter) -> None:
    limits = limiter.spawn_limits("ns", "tok", per_namespace=1, per_token=0)
    await limiter.redis.set(limits[0].key, 5)  # e.g. restored without its TTL
    refusal = await limiter.take(limits)
    assert refusal is not None and refusal.retry_after_s == WINDOW_MS // 1000
    assert await limiter.redis.pttl(limits[0].key) > 0


def test_counter_keys_hold_no_token_and_share_the_namespace_slot(limiter: RateLimiter) -> None:
    ns_key, token_key = (limit.key for limit in limiter.spawn_limits("team", "mh_secret", 1, 1))
    assert "mh_secret" not in token_key
    assert ns_key == "t:rl:{team}:spawn" and token_key.startswith("t:rl:{team}:spawn:t:")
    assert ":ns:" not in token_key  # outside the part of the keyspace agents may write


@pytest.mark.parametrize(
    ("bearer", "allowed", "expected"),
    [
        ("S", ("*",), "default"),
        ("S:team", ("*",), "team"),
        ("S:team", ("default", "team"), "team"),
        ("S:other", ("default", "team"), None),
        ("S", ("team",), None),
        ("S", ("default",), "default"),
        ("S:team", (), None),
        ("X:team", ("*",), None),
    ],
)
def test_shared_secret_grants_only_allowed_namespaces(
    bearer: str, allowed: tuple[str, ...], expected: str | None
) -> None:
    assert shared_secret_namespace(bearer, "S", allowed) == expected


def test_the_hub_refuses_the_shared_secret_outside_its_namespaces(
    settings: Settings, fake_server: fakeredis.FakeServer
) -> None:
    app = create_app(
        Settings(**{**settings_dict(settings), "shared_secret_namespaces": ("default",)}),
        redis=fakeredis.FakeAsyncRedis(server=fake_server),
        blocking=fakeredis.FakeAsyncRedis(server=fake_server),
    )
    with TestClient(app) as c:
        assert c.get("/api/machines", headers={"Authorization": f"Bearer {SECRET}"}).status_code == 200
        assert c.get("/api/machines", headers={"Authorization": f"Bearer {SECRET}:default"}).status_code == 200
        refused = c.get("/api/machines", headers={"Authorization": f"Bearer {SECRET}:team"})
        assert refused.status_code == 401 and refused.json() == {"error": "Invalid token"}


def test_limit_errors_name_the_limit_and_say_when_to_retry() -> None:
    r = error_response(RateLimited("at most 2 a minute", limit="spawns_per_minute_token", retry_after_s=7))
    assert r.status_code == 429
    assert r.body == (b'{"error":"Too many requests","detail":"at most 2 a minute","limit":"spawns_per_minute_token"}')
    assert r.headers["retry-after"] == "7"
    timeout = error_response(RequestTimeout("slow", limit="body_timeout_s"))
    assert timeout.status_code == 408 and timeout.headers["connection"] == "close"
    assert "retry-after" not in timeout.headers


def test_settings_of_the_limits() -> None:
    s = Settings.from_env(
        {"MACHINE_HUB_SHARED_SECRET_NAMESPACES": "default, team", "MACHINE_HUB_SPAWNS_PER_MINUTE_TOKEN": "0"}
    )
    assert s.shared_secret_namespaces == ("default", "team") and s.spawns_per_minute_token == 0
    assert Settings.from_env(s.to_env()) == s
    assert Settings().shared_secret_namespaces == ("*",)
    with pytest.raises(SettingsError, match="shared_secret_namespaces"):
        Settings.from_env({"MACHINE_HUB_SHARED_SECRET_NAMESPACES": "ok,no way"})
    with pytest.raises(SettingsError, match="header_timeout_s must be positive"):
        Settings.from_env({"MACHINE_HUB_HEADER_TIMEOUT_S": "0"})
    with pytest.raises(SettingsError, match="spawns_per_minute_namespace must not be negative"):
        Settings.from_env({"MACHINE_HUB_SPAWNS_PER_MINUTE_NAMESPACE": "-1"})


async def test_a_namespace_keeps_at_most_its_quota_of_jobs(limiter: RateLimiter) -> None:
    limits = limiter.spawn_limits("ns", "tok", per_namespace=100, per_token=100)
    index = limiter.keys.jobs("ns")
    await limiter.redis.zadd(index, {"ns-m.old": 1_000, "ns-m.new": 2_000})
    refusal = await limiter.take(limits, ns="ns", max_stored_jobs=2, retention_ms=60_000)
    assert refusal is not None and refusal.limit.name == "max_stored_jobs_per_namespace"
    assert refusal.retry_after_s >= 1
    assert [await limiter.redis.get(limit.key) for limit in limits] == [b"0", b"0"]  # nothing counted
    await limiter.redis.zrem(index, "ns-m.old")  # the worker trimmed what outlived the retention
    assert await limiter.take(limits, ns="ns", max_stored_jobs=2, retention_ms=60_000) is None
    assert await limiter.take(limits, ns="other", max_stored_jobs=2, retention_ms=60_000) is None
