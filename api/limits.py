"""Limits the hub applies inside the application: body size and time, requests in flight, spawn rate.

The connection-level limits (header time, open connections) are in api/protocol.py, before any
request reaches the application. Every refusal names its setting in the body's `limit` and is
counted in `machine_hub_limit_refusals_total`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import bearer_token
from api.errors import error_response
from api.hub import hub_of
from api.metrics import Metrics
from core.errors import BodyTooLarge, HubBusy, RateLimited, RequestTimeout
from core.ratelimits import STORED_JOBS, RateLimiter
from core.settings import Settings

# Cheap and needed to judge the hub itself, so never refused for load.
UNLIMITED_PATHS = frozenset({"/livez", "/readyz", "/metrics"})
EVENTS_PATH = "/api/events"  # bounded by the stream limits instead (api/events.py)
BUSY_RETRY_AFTER_S = 1


class BodyLimit:
    """A declared Content-Length over the limit is answered 413 at once; a body that grows past
    it while streaming raises BodyTooLarge inside the route, which the error table maps to 413.
    A body still incomplete `body_timeout_s` after the request started raises RequestTimeout (408),
    so a client sending a byte now and then (slow POST) cannot hold a request open."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float, metrics: Metrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            self.metrics.refused("max_body_bytes")
            await error_response(BodyTooLarge(f"the limit is {self.max_bytes} bytes"))(scope, receive, send)
            return
        seen = 0
        complete = answered = False
        deadline = asyncio.get_running_loop().time() + self.timeout_s

        async def limited() -> Message:
            nonlocal seen, complete
            if complete:
                return await receive()  # after the body: waiting for a disconnect is not a body read
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                if answered:  # too late for a 408 (a stream listening for the client): treat it as gone
                    self.metrics.refused("body_timeout_s")  # else counted with the 408 (api/errors.py)
                    return {"type": "http.disconnect"}
                raise RequestTimeout(
                    f"the request body did not arrive within {self.timeout_s:g} s", limit="body_timeout_s"
                ) from None
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge(f"the limit is {self.max_bytes} bytes")
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def watched(message: Message) -> None:
            nonlocal answered
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited, watched)


class InFlightLimit:
    """At most `limit` requests of this hub process at once; more get 503 at once, not a queue.

    Event streams have their own limits and probes are never refused, so a busy hub still tells
    its load balancer the truth."""

    def __init__(self, app: ASGIApp, limit: int, metrics: Metrics) -> None:
        self.app = app
        self.limit = limit
        self.metrics = metrics
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNLIMITED_PATHS or scope["path"] == EVENTS_PATH:
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            self.metrics.refused("max_requests_in_flight")
            busy = HubBusy(
                f"this hub is answering its limit of {self.limit} requests at once; retry shortly",
                limit="max_requests_in_flight",
                retry_after_s=BUSY_RETRY_AFTER_S,
            )
            await error_response(busy)(scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


def spawn_rate_limited(
    endpoint: Callable[[Request], Awaitable[Response]], settings: Settings
) -> Callable[[Request], Awaitable[Response]]:
    """The spawn route behind the per-namespace and per-token spawn rates.

    Checked right after the token (a 401 comes first) and before anything about the machine or
    the body, so every authenticated spawn attempt counts, and a refused one costs one script.
    """

    async def limited(request: Request) -> Response:
        hub = hub_of(request)
        ns = await hub.authenticate(request)
        limiter: RateLimiter = request.state.rate_limiter
        limits = limiter.spawn_limits(
            ns, bearer_token(request), settings.spawns_per_minute_namespace, settings.spawns_per_minute_token
        )
        refusal = await limiter.take(
            limits,
            ns=ns,
            max_stored_jobs=settings.max_stored_jobs_per_namespace,
            retention_ms=int(settings.job_retention_s * 1000),
        )
        if refusal is not None:
            after = refusal.retry_after_s
            if refusal.limit.name == STORED_JOBS:
                detail = f"the namespace keeps {refusal.limit.per_window} jobs, its most; retry in {after} s"
            else:
                scope = "namespace" if refusal.limit.name.endswith("namespace") else "token"
                detail = f"at most {refusal.limit.per_window} spawns per minute per {scope}; retry in {after} s"
            raise RateLimited(detail, limit=refusal.limit.name, retry_after_s=after)
        return await endpoint(request)

    return limited
