"""Attacks against real processes: a redis-server with ACL users, hubs, a worker and agents.

The attacker holds what one agent host holds: that machine's Redis URL (`attacker` fixtures).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from machine_hub.redis_server import RedisServer
from tests.e2e.harness import Stack, acl_redis_server, fast_settings


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    # DEBUG is on, so that only the ACL stands between a machine and it.
    server = acl_redis_server(tmp_path_factory.mktemp("redis"), "--enable-debug-command", "yes").start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("stack"), redis_server, fast_settings(redis_server.url))
    stack.hubs = [stack.start_hub(), stack.start_hub()]
    stack.start_worker()
    yield stack
    stack.close()


@pytest.fixture
def machine_id() -> str:
    return f"m-{uuid.uuid4().hex[:8]}"


def client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5)
