"""Unit fixtures: the hub app on a fresh fakeredis server per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import fakeredis
import pytest
from starlette.testclient import TestClient

from api.app import create_app
from core.keys import Keys
from core.settings import Settings

SECRET = "s3cret-token"


@pytest.fixture
def fake_server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def settings() -> Settings:
    return Settings(
        cli_api_token=SECRET,
        key_prefix=f"t-{uuid.uuid4().hex[:8]}",
        block_s=0.2,
        spawn_claim_timeout_s=0.3,
        spawn_timeout_s=0.6,
        paths_timeout_s=0.3,
    )


@pytest.fixture
def keys(settings: Settings) -> Keys:
    return Keys(settings.key_prefix)


@pytest.fixture
def client(settings: Settings, fake_server: fakeredis.FakeServer) -> Iterator[TestClient]:
    app = create_app(
        settings,
        redis=fakeredis.FakeAsyncRedis(server=fake_server),
        blocking=fakeredis.FakeAsyncRedis(server=fake_server),
    )
    with TestClient(app) as client:
        yield client


@pytest.fixture
def sync_redis(fake_server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fake_server)
