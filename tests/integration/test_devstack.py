"""How `machine-hub dev` finds its Redis: REDIS_URL, a local one, or one it starts itself."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
import redis

from machine_hub.devstack import choose_redis
from machine_hub.redis_server import RedisServer, free_port


def test_a_reachable_redis_url_is_used(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r").start()
    try:
        assert choose_redis({"REDIS_URL": server.url}, tmp_path / "data") == (server.url, None)
    finally:
        server.kill()


def test_without_any_redis_a_private_server_is_started_with_its_data_in_the_project(tmp_path: Path) -> None:
    url, server = choose_redis({"REDIS_URL": "redis://127.0.0.1:1/0"}, tmp_path / "data", local_port=free_port())
    assert server is not None
    try:
        client = redis.Redis.from_url(url)
        assert client.ping()
        client.close()
        assert (tmp_path / "data" / "redis").is_dir()
    finally:
        server.stop()
    assert server.process is not None and server.process.returncode == 0


def test_without_redis_server_it_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(click.ClickException, match="install it"):
        choose_redis({}, tmp_path / "data", local_port=free_port())
