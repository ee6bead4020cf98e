"""GET /api/events: the caller's namespace event stream (core.events) as Server-Sent Events.

Each event is `id: <stream id>`, `event: machine | job`, `data: <event JSON>`. A client that
reconnects with Last-Event-ID gets every event after that id the stream still retains; without
one the stream starts with new events. Every open stream holds one Redis connection blocked in
XREAD, so a hub process bounds them per token, per namespace (429: one tenant cannot take another's
streams) and in all (503). The token comes only from the Authorization header (a token in a URL
ends up in logs and browser history) and is checked again every `event_stream_recheck_s`, so a
revoked token's streams end within that. Streams end when the hub shuts down, so SIGTERM is not
held up by them.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import anyio
from redis.asyncio import Redis
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from api.auth import bearer_token
from api.health import draining
from api.hub import Hub, hub_of
from api.metrics import Metrics, metrics_of
from core.connections import REDIS_FAILURES, blocking_client
from core.errors import HubStreamsFull, InvalidHeader, InvalidQuery, InvalidToken, TooManyStreams
from core.events import Event, MachineEvent, encode
from core.settings import Settings

STREAM_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")
PING_S = 15
SHUTDOWN_GRACE_S = 2.0
RETRY_AFTER_S = 5  # a stream slot frees when someone closes theirs: a hint, not a promise
UNBOUNDED_POOL = 2**31 - 1
# The route's own answer while the hub drains, besides the error table's (also in /openapi.json).
SHUTTING_DOWN = {"error": "Hub shutting down"}


class Streams:
    """The open streams of one hub process, by namespace and token, and the Redis connections
    they block on."""

    def __init__(self, settings: Settings, redis: Redis | None = None) -> None:
        self.limit = settings.max_event_streams
        self.per_namespace = settings.max_event_streams_per_namespace
        self.per_token = settings.max_event_streams_per_token
        self.block_s = settings.block_s
        self.recheck_s = settings.event_stream_recheck_s
        # One connection per stream; the pool is as large as the bound on streams.
        self.redis = redis or blocking_client(settings, max_connections=max(1, self.limit or UNBOUNDED_POOL))
        self.open = 0
        self.by_namespace: Counter[str] = Counter()
        self.by_token: Counter[str] = Counter()

    def admit(self, ns: str, token_id: str) -> None:
        """Take a slot for a new stream, or raise the limit it would break."""
        if self.per_token and self.by_token[token_id] >= self.per_token:
            raise TooManyStreams(
                f"this token has {self.per_token} event streams open on this hub; close one",
                limit="max_event_streams_per_token",
                retry_after_s=RETRY_AFTER_S,
            )
        if self.per_namespace and self.by_namespace[ns] >= self.per_namespace:
            raise TooManyStreams(
                f"this namespace has {self.per_namespace} event streams open on this hub; close one",
                limit="max_event_streams_per_namespace",
                retry_after_s=RETRY_AFTER_S,
            )
        if self.limit and self.open >= self.limit:
            raise HubStreamsFull(
                f"this hub serves its limit of {self.limit} event streams; retry later or on another hub",
                limit="max_event_streams",
                retry_after_s=RETRY_AFTER_S,
            )
        self.open += 1
        self.by_namespace[ns] += 1
        self.by_token[token_id] += 1

    def release(self, ns: str, token_id: str) -> None:
        self.open -= 1
        for counts, key in ((self.by_namespace, ns), (self.by_token, token_id)):
            counts[key] -= 1
            if counts[key] <= 0:
                del counts[key]

    async def aclose(self) -> None:
        await self.redis.aclose()


def _token(request: Request) -> str:
    """The bearer token; one in the URL is refused, not read (it would be logged on the way)."""
    if "token" in request.query_params:
        raise InvalidQuery("tokens are not accepted in URLs: send Authorization: Bearer <token> - at `token`")
    return bearer_token(request)


def _resume_id(request: Request) -> str | None:
    raw = request.headers.get("last-event-id") or request.query_params.get("lastEventId")
    if not raw:
        return None
    if not STREAM_ID.fullmatch(raw):
        raise InvalidHeader("Last-Event-ID must be an event id of this stream, like 1764369345123-0")
    return raw


class _CountedStream(EventSourceResponse):
    """Gives its slot back however the stream ends (finished, client gone, revoked, shutdown)."""

    def __init__(
        self,
        streams: Streams,
        metrics: Metrics,
        content: AsyncIterator[ServerSentEvent],
        shutdown: anyio.Event,
        slot: tuple[str, str],
    ) -> None:
        # On shutdown sse-starlette sets `shutdown`; the generator then ends by itself, so the
        # response completes cleanly before the grace period would cancel it.
        super().__init__(content, ping=PING_S, shutdown_event=shutdown, shutdown_grace_period=SHUTDOWN_GRACE_S)
        self._streams = streams
        self._metrics = metrics
        self._slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._streams.release(*self._slot)
            self._metrics.streams_open.dec()


async def _still_granted(hub: Hub, request: Request, token: str, ns: str, metrics: Metrics) -> bool:
    """Whether the token still grants `ns`; a Redis failure ends the stream too (the client
    reconnects with its last id and is checked again)."""
    try:
        return await hub.authenticate(request, token) == ns
    except InvalidToken:
        return False
    except REDIS_FAILURES:
        metrics.redis_errors.labels("events").inc()
        return False


async def _events(
    hub: Hub,
    request: Request,
    streams: Streams,
    metrics: Metrics,
    grant: tuple[str, str],
    after: str,
    shutdown: anyio.Event,
) -> AsyncIterator[ServerSentEvent]:
    ns, token = grant
    loop = asyncio.get_running_loop()
    recheck_at = loop.time() + streams.recheck_s
    stop = asyncio.ensure_future(shutdown.wait())
    read: asyncio.Future[list[tuple[str, Event]]] | None = None
    try:
        while not draining() and not shutdown.is_set():
            if loop.time() >= recheck_at:
                if not await _still_granted(hub, request, token, ns, metrics):
                    return  # revoked: the client's reconnect gets its 401
                recheck_at = loop.time() + streams.recheck_s
            if read is None:
                read = asyncio.ensure_future(hub.queue.events.read(streams.redis, ns, after, streams.block_s))
            waiting: set[asyncio.Future[Any]] = {read, stop}
            await asyncio.wait(waiting, timeout=recheck_at - loop.time(), return_when=asyncio.FIRST_COMPLETED)
            if stop.done():
                return  # shutting down; the read is cancelled below
            if not read.done():
                continue  # time to check the token again; the read goes on
            try:
                batch = read.result()
            except REDIS_FAILURES:
                # The client reconnects with the last id it got and misses nothing still retained.
                metrics.redis_errors.labels("events").inc()
                return
            read = None
            for entry_id, event in batch:
                after = entry_id
                kind = "machine" if isinstance(event, MachineEvent) else "job"
                yield ServerSentEvent(data=encode(event).decode(), event=kind, id=entry_id)
    finally:
        stop.cancel()
        if read is not None and not read.done():
            read.cancel()  # client gone, revoked or shutdown: free the connection now, not after block_s


async def events(request: Request) -> Response:
    hub = hub_of(request)
    token = _token(request)
    ns = await hub.authenticate(request, token)
    request.state.namespace = ns  # for the refusal count (api/errors.py)
    after = _resume_id(request)
    streams: Streams = request.state.streams
    metrics = metrics_of(request)
    if draining():
        return JSONResponse(SHUTTING_DOWN, 503)
    if after is None:
        after = await hub.queue.events.last_id(hub.redis, ns)
    slot = (ns, hashlib.sha256(token.encode()).hexdigest())
    streams.admit(*slot)  # a refusal is counted with the error's answer (api/errors.py)
    metrics.streams_open.inc()
    shutdown = anyio.Event()
    content = _events(hub, request, streams, metrics, (ns, token), after, shutdown)
    return _CountedStream(streams, metrics, content, shutdown, slot)
