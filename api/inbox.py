"""The hub process's reply reader: one blocking pop over this hub's inboxes, resolving waiters.

Each namespace has its own inbox key per hub (so an agent only ever writes under its own
namespace), and all of one hub's inboxes share a hash tag, so a single BLMPOP waits on all of
them. A new namespace wakes the reader through the hub's wake key so it starts listening there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.keys import Keys
from core.queue import JobQueue
from core.schemas import Reply

log = logging.getLogger(__name__)
MAX_NAMESPACES = 1000
WAKE_TOKEN = b"wake"
WAKE_TTL_MS = 60_000


class Inbox:
    """Futures waiting for job replies, and the task that fills them."""

    def __init__(
        self, queue: JobQueue, blocking: Redis, keys: Keys, hub_id: str, *, block_s: float, reconnect_max_s: float
    ) -> None:
        self.queue = queue
        self.blocking = blocking
        self.keys = keys
        self.hub_id = hub_id
        self.block_s = block_s
        self.reconnect_max_s = reconnect_max_s
        self._waiters: dict[str, set[asyncio.Future[Reply]]] = {}
        self._machines: dict[str, str] = {}
        self._namespaces: OrderedDict[str, None] = OrderedDict()
        self._listening: frozenset[str] = frozenset()

    def address(self, ns: str) -> str:
        return self.keys.inbox(ns, self.hub_id)

    @contextlib.asynccontextmanager
    async def expect(self, ns: str, machine_id: str, job_id: str) -> AsyncIterator[asyncio.Future[Reply]]:
        """A future for the reply to `job_id`; register it before the job can be answered."""
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, set()).add(future)
        self._machines[job_id] = machine_id
        await self._listen(ns)
        try:
            yield future
        finally:
            waiting = self._waiters.get(job_id)
            if waiting is not None:
                waiting.discard(future)
                if not waiting:
                    del self._waiters[job_id]
                    del self._machines[job_id]

    async def _listen(self, ns: str) -> None:
        self._namespaces[ns] = None
        self._namespaces.move_to_end(ns)
        while len(self._namespaces) > MAX_NAMESPACES:
            self._namespaces.popitem(last=False)
        if ns not in self._listening:
            wake = self.keys.hub_wake(self.hub_id)
            async with self.queue.redis.pipeline(transaction=False) as pipe:
                pipe.lpush(wake, WAKE_TOKEN)
                pipe.pexpire(wake, WAKE_TTL_MS)
                await pipe.execute()

    async def run(self) -> None:
        """Read replies until cancelled; survives Redis going away and coming back."""
        backoff = 0.05
        wake = self.keys.hub_wake(self.hub_id)
        while True:
            self._listening = frozenset(self._namespaces)
            inboxes = [wake, *(self.address(ns) for ns in self._listening)]
            try:
                replies = await self.queue.pop_inbox(self.blocking, inboxes, self.block_s, count=256)
            except RedisError as exc:
                log.warning("inbox reader: %s; retrying in %.2fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.reconnect_max_s)
                continue
            backoff = 0.05
            for reply in replies:
                # Only the machine the job was sent to may answer it.
                if self._machines.get(reply.job_id) != reply.machine_id:
                    continue
                for future in self._waiters.get(reply.job_id, ()):
                    if not future.done():
                        future.set_result(reply)
            # Let the resolved requests answer before this task sends its next pop.
            await asyncio.sleep(0)
