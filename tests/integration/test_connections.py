"""machine-hub's Redis clients against a real redis-server on a unix socket: our writes over
redis-py's class for the scheme (every other test runs on TCP; tests/security/test_tls.py on TLS)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.connections import TimedUnixConnection, blocking_client, request_client
from core.settings import Settings
from machine_hub.redis_server import RedisServer


@pytest.fixture(scope="module")
def socket_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("unix")
    path = folder / "redis.sock"
    server = RedisServer(folder, args=("--unixsocket", str(path), "--unixsocketperm", "700")).start()
    try:
        yield path
    finally:
        server.kill()


async def test_a_unix_socket_client_sends_pipelines_and_blocking_pops(socket_path: Path) -> None:
    settings = Settings(redis_url=f"unix://{socket_path}", block_s=0.2)
    redis, blocking = request_client(settings), blocking_client(settings)
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(400):
                pipe.set(f"k{i}", f"v{i} é".encode(), px=60_000)
                pipe.get(f"k{i}")
            out = await pipe.execute()
        assert out[1::2] == [f"v{i} é".encode() for i in range(400)]
        assert int(await redis.execute_command("CLIENT ID")) > 0  # a command name of two words, split
        assert await blocking.blmpop(0.2, 1, "empty", direction="RIGHT") is None  # timed out, not failed
        await redis.lpush("mailbox", b"job")
        assert await blocking.blmpop(0.2, 1, "mailbox", direction="RIGHT") == [b"mailbox", [b"job"]]
        connection = await redis.connection_pool.get_connection()
        await redis.connection_pool.release(connection)
        assert isinstance(connection, TimedUnixConnection)
    finally:
        await redis.aclose()
        await blocking.aclose()
