"""GET /api/events: the caller's namespace event stream (core.events) as Server-Sent Events.

Each event is `id: <stream id>`, `event: machine | job`, `data: <event JSON>`. A client that
reconnects with Last-Event-ID (EventSource does so by itself) gets every event after that id the
stream still retains; without one the stream starts with new events. Every open stream holds one
Redis connection blocked in XREAD, so a hub process serves at most `max_event_streams` of them
(503 beyond). Streams end when the hub shuts down, so SIGTERM is not held up by them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import anyio
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from api.health import draining
from api.hub import Hub, hub_of
from api.metrics import Metrics, metrics_of
from core.connections import blocking_client
from core.errors import InvalidHeader, MissingToken
from core.events import Event, MachineEvent, encode
from core.settings import Settings

STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
PING_S = 15
SHUTDOWN_GRACE_S = 2.0


class Streams:
    """The open streams of one hub process and the Redis connections they block on."""

    def __init__(self, settings: Settings, redis: Redis | None = None) -> None:
        self.limit = settings.max_event_streams
        self.block_s = settings.block_s
        # One connection per stream; the pool is as large as the bound on streams.
        self.redis = redis or blocking_client(settings, max_connections=max(1, self.limit))
        self.open = 0

    async def aclose(self) -> None:
        await self.redis.aclose()


async def _namespace(hub: Hub, request: Request) -> str:
    """Bearer token from the Authorization header, or `?token=` (EventSource cannot set headers)."""
    if request.headers.get("authorization") is not None or "token" not in request.query_params:
        return await hub.authenticate(request)
    token = request.query_params["token"].strip()
    if not token:
        raise MissingToken()
    return await hub.authenticate(request, token)


def _resume_id(request: Request) -> str | None:
    raw = request.headers.get("last-event-id") or request.query_params.get("lastEventId")
    if raw is None or raw == "":
        return None
    if not STREAM_ID.match(raw.strip()):
        raise InvalidHeader("Last-Event-ID must be an event id of this stream, like 1764369345123-0")
    return raw.strip()


class _CountedStream(EventSourceResponse):
    """Gives its slot back however the stream ends (finished, client gone, shutdown)."""

    def __init__(
        self, streams: Streams, metrics: Metrics, content: AsyncIterator[ServerSentEvent], shutdown: anyio.Event
    ) -> None:
        # On shutdown sse-starlette sets `shutdown`; the generator then ends by itself, so the
        # response completes cleanly before the grace period would cancel it.
        super().__init__(content, ping=PING_S, shutdown_event=shutdown, shutdown_grace_period=SHUTDOWN_GRACE_S)
        self._streams = streams
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._streams.open -= 1
            self._metrics.streams_open.dec()


async def _events(
    hub: Hub, streams: Streams, metrics: Metrics, ns: str, after: str, shutdown: anyio.Event
) -> AsyncIterator[ServerSentEvent]:
    stop = asyncio.ensure_future(shutdown.wait())
    read: asyncio.Future[list[tuple[str, Event]]] | None = None
    try:
        while not draining() and not shutdown.is_set():
            read = asyncio.ensure_future(hub.queue.events.read(streams.redis, ns, after, streams.block_s))
            await asyncio.wait({read, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not read.done():
                return  # shutting down; the read is cancelled below
            try:
                batch = read.result()
            except (RedisError, OSError):
                # The client reconnects with the last id it got and misses nothing still retained.
                metrics.redis_errors.labels("events").inc()
                return
            for entry_id, event in batch:
                after = entry_id
                kind = "machine" if isinstance(event, MachineEvent) else "job"
                yield ServerSentEvent(data=encode(event).decode(), event=kind, id=entry_id)
    finally:
        stop.cancel()
        if read is not None and not read.done():
            read.cancel()  # client gone or shutdown: free the connection now, not after block_s


async def events(request: Request) -> Response:
    hub = hub_of(request)
    ns = await _namespace(hub, request)
    after = _resume_id(request)
    streams: Streams = request.state.streams
    metrics = metrics_of(request)
    if streams.open >= streams.limit:
        return JSONResponse({"error": "Too many event streams", "detail": "retry later or on another hub"}, 503)
    if draining():
        return JSONResponse({"error": "Hub shutting down"}, 503)
    if after is None:
        after = await hub.queue.events.last_id(hub.redis, ns)
    streams.open += 1
    metrics.streams_open.inc()
    shutdown = anyio.Event()
    return _CountedStream(streams, metrics, _events(hub, streams, metrics, ns, after, shutdown), shutdown)
