"""Integration fixtures: one private redis-server per session, a fresh key prefix per test.

The server listens on a free port of its own, so a Redis on 6379 is never touched; tests are
isolated by key prefix, never by flushing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar
from uuid import uuid4

import pytest
from redis.asyncio import Redis

from core.connections import blocking_client, request_client
from core.keys import Keys
from core.settings import Settings
from machine_hub.redis_server import RedisServer

T = TypeVar("T")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def settings(redis_server: RedisServer) -> Settings:
    return Settings(redis_url=redis_server.url, key_prefix=f"t-{uuid4().hex[:8]}", block_s=1.0)


@pytest.fixture
def keys(settings: Settings) -> Keys:
    return Keys(settings.key_prefix)


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = request_client(settings)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def blocking(settings: Settings) -> AsyncIterator[Redis]:
    client = blocking_client(settings)
    try:
        yield client
    finally:
        await client.aclose()


async def commands_during(redis: Redis, action: Callable[[], Awaitable[T]]) -> tuple[T, int]:
    """`action`'s result and the number of commands Redis ran meanwhile (this test's alone: the
    tests of one session run one after another). A script counts once, whatever it calls."""
    before = int((await redis.info("stats"))["total_commands_processed"])
    result = await action()
    after = int((await redis.info("stats"))["total_commands_processed"])
    return result, after - before - 1  # the first INFO is counted by the second
