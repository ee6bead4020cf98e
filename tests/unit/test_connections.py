"""How machine-hub's Redis connections write: hiredis packs exactly what redis-py would send."""

from __future__ import annotations

from typing import Any

import pytest
from redis import exceptions
from redis.asyncio import Connection

from core.connections import TimedConnection, TimedSSLConnection, TimedUnixConnection, request_client
from core.settings import Settings

SENT = [
    ("SET", "k", "v"),
    ("SET", b"k", b"\x00\xff binary", "PX", 15000),
    ("ZADD", "z", 1.5, "m", 1e20, "n", 0.1, "o"),
    ("EVALSHA", "ab12", 2, "k1", b"k2", -5, "é unicode"),
    ("CLIENT KILL", "USER", "u"),  # a command name of two words
    (b"ACL SETUSER", "u", "on"),
    ("SET", "k", memoryview(b"view")),
    ("SET", "k", ""),
]


@pytest.mark.parametrize("args", SENT)
def test_commands_are_packed_byte_for_byte_as_redis_py_packs_them(args: tuple[Any, ...]) -> None:
    ours = b"".join(TimedConnection().pack_command(*args))
    assert ours == b"".join(Connection().pack_command(*args))


@pytest.mark.parametrize("value", [None, True, object()])
def test_a_value_redis_cannot_take_is_a_data_error_as_in_redis_py(value: object) -> None:
    with pytest.raises(exceptions.DataError):
        TimedConnection().pack_command("SET", "k", value)


@pytest.mark.parametrize(
    ("url", "cls"),
    [
        ("redis://127.0.0.1:6390/0", TimedConnection),
        ("REDIS://127.0.0.1:6390/0", TimedConnection),
        ("rediss://127.0.0.1:6390/0", TimedSSLConnection),
        ("unix:///tmp/redis.sock", TimedUnixConnection),
    ],
)
async def test_every_scheme_keeps_its_kind_of_connection_with_our_writes(url: str, cls: type) -> None:
    client = request_client(Settings(redis_url=url))
    try:
        assert client.connection_pool.connection_class is cls
    finally:
        await client.aclose()
