"""The hub process's reply reader: one blocking pop on this hub's inbox, resolving waiters.

Any machine may push onto a hub's inbox (that is how it answers), so a reply resolves a waiting
request only when it names the machine the job was sent to and carries the job's secret, which
only that machine was given. A reply for a job nobody here waits for any more (the hub gave up
at its deadline) is checked against the job record, and its final event published, except for a
spawn that waited for its machine: no hub waits for those, and the worker announces each once.

When the reader loses Redis, a read-only job waiting here fails at once (503) instead of at its
deadline: its envelope or its reply may have gone with a primary that failed over before
replicating them, and such a job is safe to send again. A recorded job's outcome is in its record.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from core.connections import REDIS_ERRORS, REDIS_FAILURES, Backoff
from core.events import JobEvent
from core.outages import OutageGrace
from core.queue import JobQueue
from core.schemas import CLAIMED_KINDS, FINAL_STATES, Reply

log = logging.getLogger(__name__)
LATE_REPLY_FAILURES: tuple[type[Exception], ...] = (*REDIS_ERRORS, UnicodeDecodeError)


@dataclass(frozen=True, slots=True)
class _Waiter:
    future: asyncio.Future[Reply]
    machine_id: str
    secret: str
    read_only: bool


class Inbox:
    """Futures waiting for job replies, and the task that fills them."""

    def __init__(
        self,
        queue: JobQueue,
        blocking: Redis,
        hub_id: str,
        *,
        block_s: float,
        reconnect_max_s: float,
        outage_grace_s: float = 0.0,
    ) -> None:
        self.queue = queue
        self.blocking = blocking
        self.hub_id = hub_id
        self.block_s = block_s
        self.reconnect_max_s = reconnect_max_s
        self._waiters: dict[str, list[_Waiter]] = {}
        # When this hub saw Redis fail (its reader, or a request): replies and heartbeats may have
        # been lost with it (a failover), so "no answer" and "offline" are not certain then.
        self.outages = OutageGrace(outage_grace_s)

    @contextlib.asynccontextmanager
    async def expect(
        self, machine_id: str, job_id: str, secret: str, *, read_only: bool = False
    ) -> AsyncIterator[asyncio.Future[Reply]]:
        """A future for the reply to `job_id`; register it before the job can be answered."""
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(future, machine_id, secret, read_only)
        self._waiters.setdefault(job_id, []).append(waiter)
        try:
            yield future
        finally:
            if future.done() and not future.cancelled():
                future.exception()  # a loss the request ended before awaiting (its push failed) is no error to log
            future.cancel()
            waiting = self._waiters.get(job_id)
            if waiting is not None:
                waiting.remove(waiter)
                if not waiting:
                    del self._waiters[job_id]

    async def run(self) -> None:
        """Read replies until cancelled; survives Redis going away and coming back."""
        backoff = Backoff(self.reconnect_max_s)
        while True:
            try:
                replies = await self.queue.pop_inbox(self.blocking, self.hub_id, self.block_s, count=256)
            except REDIS_FAILURES as exc:
                self.outages.failed()
                self._lost(exc)
                pause = backoff.next()
                log.warning("inbox reader: %s; retrying in %.2fs", exc, pause)
                await asyncio.sleep(pause)
                continue
            self.outages.answered()
            backoff.reset()
            late = [reply for reply in replies if not self._resolve(reply)]
            # Let the resolved requests answer before this task sends its next pop.
            await asyncio.sleep(0)
            for reply in late:
                await self._late(reply)

    def _lost(self, exc: BaseException) -> None:
        for waiting in self._waiters.values():
            for waiter in waiting:
                if waiter.read_only and not waiter.future.done():
                    waiter.future.set_exception(RedisConnectionError(f"Redis failed while a reply was awaited: {exc}"))

    def _resolve(self, reply: Reply) -> bool:
        """Hand the reply to its waiters; False when nobody here waits for it."""
        waiting = self._waiters.get(reply.job_id)
        if not waiting:
            return False
        for waiter in waiting:
            if (
                waiter.machine_id == reply.machine_id
                and hmac.compare_digest(waiter.secret.encode(), reply.secret.encode())
                and not waiter.future.done()
            ):
                waiter.future.set_result(reply)
        return True

    async def _late(self, reply: Reply) -> None:
        """A job this hub asked for ended after the hub stopped waiting: publish its end."""
        if not reply.origin or reply.state not in FINAL_STATES:
            return
        try:
            ns = await self.queue.redis.get(self.queue.keys.owner(reply.machine_id))
            if ns is None:
                return
            record = await self.queue.record(ns.decode(), reply.machine_id, reply.job_id)
            if (
                record is None
                or record.kind not in CLAIMED_KINDS
                or record.wait_ms  # a spawn that waited for its machine: the worker announces it (core.waiting)
                or record.reply_to != self.hub_id
                or record.state != reply.state
                or not hmac.compare_digest(record.secret.encode(), reply.secret.encode())
            ):
                return
            event = JobEvent(job_id=reply.job_id, machine_id=reply.machine_id, kind=record.kind, state=record.state)
            await self.queue.publish_final(ns.decode(), event)
        except LATE_REPLY_FAILURES as exc:
            log.info("late reply for job %s not published: %s", reply.job_id, exc)
