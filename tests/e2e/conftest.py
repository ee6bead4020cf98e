"""End-to-end fixtures: one redis-server, two hubs and a worker per test module, agents per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from machine_hub.redis_server import RedisServer
from tests.e2e.harness import Stack, acl_redis_server, fast_settings


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = acl_redis_server(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("stack"), redis_server, fast_settings(redis_server.url))
    stack.hubs = [stack.start_hub(), stack.start_hub()]
    stack.start_worker()  # as every deployment runs one: machine states, events, lost jobs
    yield stack
    stack.close()


@pytest.fixture
def machine_id() -> str:
    return f"m-{uuid.uuid4().hex[:8]}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    stack = getattr(item, "funcargs", {}).get("stack")
    if report.failed and isinstance(stack, Stack):
        report.sections.append(("process logs", "\n".join(stack.dump_logs())))
    return report
