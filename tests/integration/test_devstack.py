"""How `machine-hub dev` finds its Redis (REDIS_URL, else its own) and gives every process its own user."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

import click
import msgspec
import pytest
import redis
from redis.exceptions import NoPermissionError

from core.keys import Keys
from core.settings import Settings
from machine_hub.devstack import choose_redis, prove_confined, provision
from machine_hub.redis_server import RedisServer


def test_a_reachable_redis_url_is_used(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r").start()
    try:
        assert choose_redis({"REDIS_URL": server.url}, tmp_path / "data") == (server.url, None)
    finally:
        server.kill()


def test_without_redis_url_a_private_redis_is_started_with_a_password_and_an_acl_file(tmp_path: Path) -> None:
    url, server = choose_redis({"REDIS_URL": "redis://127.0.0.1:1/0"}, tmp_path / "data")
    assert server is not None
    try:
        assert url.startswith("redis://default:") and url.endswith(f"@127.0.0.1:{server.port}/0")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port).ping()  # no password: refused
        client = redis.Redis.from_url(url)
        assert client.ping()
        client.close()
        assert (tmp_path / "data" / "redis" / "users.acl").is_file()
        assert (tmp_path / "data" / "admin.url").stat().st_mode & 0o777 == 0o600
    finally:
        server.stop()
    # A second run finds the same password (and the users the ACL file kept).
    again, server = choose_redis({}, tmp_path / "data")
    assert server is not None
    try:
        assert urlsplit(again).password == urlsplit(url).password
        assert redis.Redis.from_url(again).ping()
    finally:
        server.stop()


def test_every_process_gets_its_own_user_and_the_agents_is_confined(tmp_path: Path) -> None:
    url, server = choose_redis({}, tmp_path / "data")
    assert server is not None
    try:
        settings = Settings(redis_url=url, key_prefix="devtest")
        urls, machine_id = asyncio.run(provision(settings, tmp_path / "home"))
        assert set(urls) == {"hub", "worker", "agent"} and len(set(urls.values())) == 3
        assert machine_id.startswith("machine_")
        assert "NOPERM" in prove_confined(urls["agent"], Keys("devtest"))
        hub = redis.Redis.from_url(urls["hub"])
        with pytest.raises(NoPermissionError):
            hub.execute_command("ACL", "LIST")
        hub.close()
        agent = redis.Redis.from_url(urls["agent"])
        with pytest.raises(NoPermissionError):
            agent.get(Keys("devtest").owner(machine_id))
        agent.close()
        # Running it again rotates the users: the old agent URL stops working.
        again, _ = asyncio.run(provision(msgspec.structs.replace(settings), tmp_path / "home"))
        assert again["agent"] != urls["agent"]
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(urls["agent"]).ping()
    finally:
        server.stop()


def test_without_redis_server_it_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(click.ClickException, match="install it"):
        choose_redis({}, tmp_path / "data")
