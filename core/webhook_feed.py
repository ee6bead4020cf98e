"""The worker's reader of the namespace event streams: each event a webhook asked for becomes one
delivery on the worker's queue (core.deliveries).

- **One reader at a time.** Any number of workers may run; the one holding the lease
  (`Keys.webhook_lock`, renewed on every read, released on stop) reads, the others check every
  `block_s` and take over within the lease when it stops renewing. The lease only saves work: two
  readers for a moment (one paused past its lease) queue nothing twice, since a delivery's queue
  id is its delivery id and the queue drops an id it already holds.
- **A durable cursor per namespace** (`Keys.webhook_cursor`): the id of the last event read, saved
  once that batch's deliveries are queued. A worker that stops midway reads the batch again on its
  next start, and the queue drops what it already has (it remembers a delivery for
  `webhook_retry_window_s` after its last attempt).
- **What is lost.** A stream keeps its newest `max_events` events and the last `job_retention_s`
  (core.sweeps trims it). Events trimmed before the reader got to them (every worker down longer
  than that, or a burst of more events than `max_events` in one namespace while reading lags) are
  never delivered.
- A webhook is sent only events from its creation on (by the stream id's time, the Redis clock).

Streams are read with one blocking XREAD for all namespaces. A Redis Cluster cannot serve one
XREAD over keys of many slots, so there each stream is read in turn without blocking, and a round
that found nothing waits `CLUSTER_POLL_S`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from redis.asyncio import Redis

from core.connections import REDIS_FAILURES, Backoff
from core.deliveries import Delivery
from core.errors import ScriptsNotLoaded
from core.events import decode
from core.keys import Keys
from core.lua import Scripts
from core.settings import Settings
from core.webhooks import WebhookRecord, WebhookStore, decode_records, event_name

log = logging.getLogger(__name__)
BATCH = 200  # events per stream per read
CLUSTER_POLL_S = 0.5
FEED_FAILURES: tuple[type[Exception], ...] = (*REDIS_FAILURES, ScriptsNotLoaded)

Enqueue = Callable[[Delivery], Awaitable[bool]]
"""Puts a delivery on the worker's queue: True when queued, False when the queue already held it."""


class WebhookFeed:
    def __init__(self, settings: Settings, redis: Redis, blocking: Redis, enqueue: Enqueue) -> None:
        self.settings = settings
        self.redis = redis
        self.blocking = blocking
        self.enqueue = enqueue
        self.keys = Keys(settings.key_prefix)
        self.scripts = Scripts(redis, can_load=True)
        self.store = WebhookStore(redis, self.keys, self.scripts)
        self.token = uuid.uuid4().hex
        self.holding = False
        self.lease_ms = int(max(3 * settings.block_s, 10.0) * 1000)

    async def run(self, stop: asyncio.Event) -> None:
        """Read and queue until `stop` is set; Redis failures pause it, never end it."""
        backoff = Backoff(self.settings.reconnect_max_s)
        try:
            while not stop.is_set():
                try:
                    if not await self.hold():
                        await _wait(stop, self.settings.block_s)
                    elif await self.step() is None:
                        await _wait(stop, self.settings.block_s)  # no webhooks anywhere
                    backoff.reset()
                except FEED_FAILURES as exc:
                    pause = backoff.next()
                    log.warning("webhook feed: %s; reading again in %.2fs", exc, pause)
                    await _wait(stop, pause)
        finally:
            if self.holding:
                try:
                    await self.scripts.run("UNLOCK", [self.keys.webhook_lock()], [self.token])
                except REDIS_FAILURES as exc:
                    log.warning("webhook feed: could not release its lease (%s); it ends by itself", exc)

    async def hold(self) -> bool:
        """Renew or take the reader's lease; False while another worker holds it. Renewing comes
        first, so a reader that lost its connection (not its lease) goes on at once."""
        lock = self.keys.webhook_lock()
        held = bool(await self.scripts.run("RENEW", [lock], [self.token, self.lease_ms]))
        if not held:
            held = bool(await self.redis.set(lock, self.token, nx=True, px=self.lease_ms))
            if held:
                log.info("webhook feed: this worker reads the event streams")
        self.holding = held
        return held

    async def step(self) -> int | None:
        """One read of every followed stream (waiting up to `block_s` for something new): how many
        deliveries it queued, or None when no namespace has a webhook."""
        followed = await self.subscriptions()
        if not followed:
            return None
        read = await self.read({ns: cursor for ns, (cursor, _) in followed.items()})
        queued = 0
        for ns, entries in read.items():
            queued += await self.dispatch(ns, followed[ns][1], entries)
            await self.redis.set(self.keys.webhook_cursor(ns), entries[-1][0])
        return queued

    async def subscriptions(self) -> dict[str, tuple[str, list[WebhookRecord]]]:
        """namespace -> (cursor, webhooks), for the namespaces that have webhooks."""
        names = await self.store.namespaces()
        if not names:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for ns in names:
                pipe.get(self.keys.webhook_cursor(ns))
                pipe.hgetall(self.keys.webhooks(ns))
            out = await pipe.execute()
        followed = {}
        for i, ns in enumerate(names):
            cursor, hooks = out[2 * i], decode_records(out[2 * i + 1])
            if hooks:
                followed[ns] = (cursor.decode() if cursor else "0-0", hooks)
        return followed

    async def read(self, cursors: dict[str, str]) -> dict[str, list[tuple[str, Any]]]:
        """namespace -> its new entries (stream id, fields), in order."""
        by_key = {self.keys.events(ns): ns for ns in cursors}
        streams = {self.keys.events(ns): cursor for ns, cursor in cursors.items()}
        if self.settings.redis_cluster:
            out: list[Any] = []
            for key, cursor in streams.items():
                out += await self.redis.xread({key: cursor}, count=BATCH) or []
            if not out:
                await asyncio.sleep(CLUSTER_POLL_S)
        else:
            block_ms = max(1, int(self.settings.block_s * 1000))
            out = await self.blocking.xread(streams, count=BATCH, block=block_ms) or []
        read: dict[str, list[tuple[str, Any]]] = {}
        for key, entries in out:
            ns = by_key[key.decode() if isinstance(key, bytes) else key]
            read[ns] = [(entry_id.decode(), fields) for entry_id, fields in entries]
        return {ns: entries for ns, entries in read.items() if entries}

    async def dispatch(self, ns: str, hooks: list[WebhookRecord], entries: list[tuple[str, Any]]) -> int:
        """Queue a delivery per entry and webhook that asked for its event: how many were new."""
        queued = 0
        for stream_id, fields in entries:
            raw = fields.get(b"e", b"")
            try:
                name = event_name(decode(raw))
            except msgspec.DecodeError:
                continue  # only trusted processes write streams: nothing to deliver, nothing to stop for
            if name is None:
                continue
            at_ms = int(stream_id.partition("-")[0])
            for hook in hooks:
                if name in hook.events and hook.created_ms <= at_ms:
                    delivery = Delivery(
                        namespace=ns, webhook_id=hook.id, stream_id=stream_id, event=name, data=raw.decode()
                    )
                    queued += await self.enqueue(delivery)
        return queued


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
