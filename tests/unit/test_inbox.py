"""The hub's reply reader when Redis fails under it (a failover, a restart)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import fakeredis
import pytest
from redis import exceptions

from api.inbox import Inbox
from core.keys import Keys
from core.lua import Scripts
from core.queue import JobQueue


async def test_a_read_only_job_fails_at_once_when_the_reader_loses_redis(
    fake_server: fakeredis.FakeServer, keys: Keys
) -> None:
    redis = fakeredis.FakeAsyncRedis(server=fake_server)
    queue = JobQueue(redis, keys, Scripts(redis, can_load=True))
    inbox = Inbox(
        queue, fakeredis.FakeAsyncRedis(server=fake_server), "0123456789abcdef", block_s=0.05, reconnect_max_s=0.05
    )
    reader = asyncio.create_task(inbox.run())
    try:
        async with (
            inbox.expect("m1", "read", "secret", read_only=True) as read,
            inbox.expect("m1", "spawn", "secret") as spawn,
        ):
            fake_server.connected = False  # the primary went away with whatever it had not replicated
            with pytest.raises(exceptions.ConnectionError):
                await asyncio.wait_for(read, 2)
            # A recorded job is not given up: the hub reads its record at the deadline.
            assert not spawn.done()
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def test_a_loss_no_request_awaited_any_more_is_not_logged_as_an_unretrieved_error(
    fake_server: fakeredis.FakeServer, keys: Keys
) -> None:
    # Redis fails while the request still pushes its job (it never awaits the reply): the reader
    # fails the waiter's future, and the request ends with the push's own error.
    redis = fakeredis.FakeAsyncRedis(server=fake_server)
    queue = JobQueue(redis, keys, Scripts(redis, can_load=True))
    inbox = Inbox(queue, redis, "0123456789abcdef", block_s=0.05, reconnect_max_s=0.05)
    unhandled: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: unhandled.append(context))
    try:
        async with inbox.expect("m1", "read", "secret", read_only=True):
            inbox._lost(exceptions.ConnectionError("Connection closed by server."))
        gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert unhandled == []
