"""The worker's ear on heartbeat keys: Redis keyspace notifications of heartbeats created or deleted.

With `notify-keyspace-events` holding K, g and n (`machine-hub setup` sets it), Redis tells the
worker at once when a machine's heartbeat key appears (it came online) or is deleted (a clean
stop, a removal), and the sweep looks at that machine right away. Notifications are
fire-and-forget: while the worker is disconnected they are lost, and the sweep's schedules
(core.sweeps) still find every change, only later. A key name in a notification can only have
been written by that machine's own user (or a trusted one), so it names the machine exactly.
Under Sentinel the subscription follows the primary; a hung primary leaves it silent until that
primary is demoted, and the schedules cover that gap.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

from redis.asyncio import Redis

from core import topology
from core.connections import BLOCKING_MARGIN_S, REDIS_FAILURES, Backoff, blocking_client
from core.errors import ScriptsNotLoaded
from core.settings import Settings
from core.sweeps import Sweeper

log = logging.getLogger(__name__)
NOTIFY_FLAGS = "Kgn"
NODE_REFRESH_S = 10.0
# How often a listener with nothing to read looks at `stop`: reading sends Redis nothing, so a short
# wait costs nothing there, and a worker asked to stop does not sit out a whole `block_s` (10 s).
STOP_CHECK_S = 1.0
BATCHES_AT_ONCE = 4  # batches of looks one listener runs at once
LOOK_BATCH = 500  # machines in one batch at most
# Every heartbeat's SET ... PX also notifies `expire` (class g). Looking at each cost the worker
# about ten commands per beat, more than the beat itself; but the first `expire` of a machine after
# the listener (re)subscribed is looked at: Redis may have restarted empty while it was away, and a
# machine that beat again before it came back announced itself by no `new` it could hear.
REFRESH = frozenset({b"expire", "expire"})
GONE = frozenset({b"del", "del"})
LISTEN_FAILURES: tuple[type[Exception], ...] = (*REDIS_FAILURES, ScriptsNotLoaded)


def database(url: str) -> int:
    """The database number a Redis URL selects (path `/N` or query `db=N`), 0 by default."""
    parts = urlsplit(url)
    raw = parts.path.strip("/") or (parse_qs(parts.query).get("db") or ["0"])[0]
    return int(raw) if raw.isdigit() else 0


async def follow_heartbeats(settings: Settings, sweeper: Sweeper, stop: asyncio.Event) -> None:
    """Check every machine whose heartbeat key is created or deleted, until `stop` is set."""
    if not settings.redis_cluster:
        await _listen(settings, lambda: blocking_client(settings), sweeper, stop, watches_outages=True)
        return
    # A Cluster notifies per node: listen on each, replicas too (a replica's listener keeps
    # hearing its slots when it is promoted), and look for new nodes now and then.
    listeners: dict[tuple[str, int], asyncio.Task[None]] = {}
    timeout = settings.block_s + BLOCKING_MARGIN_S
    try:
        while not stop.is_set():
            try:
                nodes = set(await topology.cluster_addresses(settings))
            except REDIS_FAILURES as exc:
                log.warning("heartbeat notifications: cannot list the cluster's nodes: %s", exc)
                nodes = set(listeners)
            for node in set(listeners) - nodes:
                listeners.pop(node).cancel()
            for host, port in nodes - set(listeners):
                connect = functools.partial(topology.node_client, settings, host, port, timeout)
                listen = _listen(settings, connect, sweeper, stop, watches_outages=False)  # the sweep watches those
                listeners[(host, port)] = asyncio.create_task(listen)
            await _wait(stop, NODE_REFRESH_S)
    finally:
        for task in listeners.values():
            task.cancel()
        await asyncio.gather(*listeners.values(), return_exceptions=True)


async def _listen(
    settings: Settings, connect: Callable[[], Redis], sweeper: Sweeper, stop: asyncio.Event, watches_outages: bool
) -> None:
    """Follow one node's notifications; `watches_outages`: its failures are Redis's (core.outages)."""
    pattern = sweeper.keys.heartbeat_channel_pattern(database(settings.redis_url))
    backoff = Backoff(settings.reconnect_max_s)
    while not stop.is_set():
        client = connect()
        pubsub = client.pubsub()
        looks = Looks(sweeper)
        try:
            await pubsub.psubscribe(pattern)
            if watches_outages:
                sweeper.grace.answered()
            backoff.reset()
            seen: set[tuple[str, str]] = set()  # looked at since this subscription, heartbeat not deleted
            while not stop.is_set():
                wait_s = min(settings.block_s, STOP_CHECK_S)
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait_s)
                looks.raise_failure()
                if message is None:
                    continue
                channel = message["channel"]
                machine = sweeper.keys.parse_heartbeat_channel(
                    channel.decode(errors="replace") if isinstance(channel, bytes) else str(channel)
                )
                if machine is None or (message["data"] in REFRESH and machine in seen):
                    continue
                looks.add(machine)
                if message["data"] in GONE:
                    seen.discard(machine)
                else:
                    seen.add(machine)
        except LISTEN_FAILURES as exc:
            if watches_outages:
                sweeper.grace.failed()
            pause = backoff.next()
            log.warning("heartbeat notifications: %s; listening again in %.2fs", exc, pause)
            await _wait(stop, pause)
        finally:
            await looks.close()
            await pubsub.aclose()
            await client.aclose()


class Looks:
    """The looks notifications ask for, in batches (Sweeper.check_many: a few round trips for a
    whole batch): up to BATCHES_AT_ONCE batches run at once, so one slow batch does not hold up the
    others, and a machine is never in two at once, so its looks happen in the order of its
    notifications (a deletion never overtakes the creation before it). Looked at one by one (32 at
    once, a dozen round trips each: 100 to 130 a second), 10,000 machines beating again after a
    Redis restart took minutes to be registered again, and a listener that falls behind lets
    Redis's pub/sub output buffer fill until Redis drops it."""

    def __init__(self, sweeper: Sweeper) -> None:
        self.sweeper = sweeper
        self.pending: dict[tuple[str, str], None] = {}  # in notification order; one look covers repeats
        self.busy: set[tuple[str, str]] = set()  # in a running batch
        self.running: set[asyncio.Task[None]] = set()
        self.failure: BaseException | None = None

    def add(self, machine: tuple[str, str]) -> None:
        self.pending[machine] = None
        self._start()

    def _start(self) -> None:
        while len(self.running) < BATCHES_AT_ONCE:
            batch = list(itertools.islice((m for m in self.pending if m not in self.busy), LOOK_BATCH))
            if not batch:
                return
            for machine in batch:
                del self.pending[machine]
            self.busy.update(batch)
            task = asyncio.create_task(self.sweeper.check_many(batch))
            self.running.add(task)
            task.add_done_callback(functools.partial(self._done, batch))

    def _done(self, batch: list[tuple[str, str]], task: asyncio.Task[None]) -> None:
        self.running.discard(task)
        self.busy.difference_update(batch)
        if not task.cancelled() and self.failure is None:
            self.failure = task.exception()
        if self.failure is None:
            self._start()

    def raise_failure(self) -> None:
        """A look that failed fails the listener (it listens again after a pause), as it did inline."""
        if self.failure is not None:
            raise self.failure

    async def close(self) -> None:
        self.pending.clear()
        tasks = list(self.running)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
