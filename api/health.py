"""Liveness, readiness and the hub's draining state on shutdown.

`/livez` checks nothing: a Redis outage must not get hubs restarted. `/readyz` pings Redis and
answers 503 when that fails or while the hub drains after SIGTERM, so a load balancer stops
sending it new requests.
"""

from __future__ import annotations

import asyncio

from sse_starlette.sse import AppStatus
from starlette.requests import Request
from starlette.responses import Response

from api.hub import hub_of
from api.metrics import metrics_of
from api.requests import json_response
from core.connections import REDIS_FAILURES

READY_TIMEOUT_S = 1.0
NOT_READY: tuple[type[Exception], ...] = (*REDIS_FAILURES, TimeoutError)


def start_draining() -> None:
    """From now on the hub is not ready, and its event streams end (sse-starlette reads this too)."""
    AppStatus.should_exit = True


def draining() -> bool:
    """True once the hub was told to stop."""
    return bool(AppStatus.should_exit)


async def livez(request: Request) -> Response:
    return json_response({"live": True})


async def readyz(request: Request) -> Response:
    if draining():
        return json_response({"ready": False, "draining": True}, 503)
    hub = hub_of(request)
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await hub.redis.ping()
    except NOT_READY as exc:
        metrics_of(request).redis_errors.labels("readyz").inc()
        return json_response({"ready": False, "redis": str(exc) or type(exc).__name__}, 503)
    return json_response({"ready": True})
