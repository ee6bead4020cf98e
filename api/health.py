"""Liveness, readiness and the hub's draining state on shutdown.

`/livez` checks nothing: a Redis outage must not get hubs restarted. `/readyz` pings Redis and
answers 503 when that fails or while the hub drains after SIGTERM, so a load balancer stops
sending it new requests.
"""

from __future__ import annotations

import asyncio
import signal

from redis.exceptions import RedisError
from sse_starlette.sse import AppStatus
from starlette.requests import Request
from starlette.responses import Response

from api.hub import hub_of
from api.metrics import metrics_of
from api.requests import json_response

READY_TIMEOUT_S = 1.0


def _uvicorn_server() -> object | None:
    """The uvicorn Server running this app, found through the SIGTERM handler it installed."""
    return getattr(signal.getsignal(signal.SIGTERM), "__self__", None)


def draining() -> bool:
    """True once the server was told to stop (SIGTERM or SIGINT under uvicorn).

    sse-starlette patches uvicorn's exit handler to set AppStatus.should_exit; uvicorn's own
    flag is read too, through its signal handler, in case the patch did not take.
    """
    if AppStatus.should_exit:
        return True
    return bool(getattr(_uvicorn_server(), "should_exit", False))


async def livez(request: Request) -> Response:
    return json_response({"live": True})


async def readyz(request: Request) -> Response:
    if draining():
        return json_response({"ready": False, "draining": True}, 503)
    hub = hub_of(request)
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await hub.redis.ping()
    except (RedisError, OSError, TimeoutError) as exc:
        metrics_of(request).redis_errors.labels("readyz").inc()
        return json_response({"ready": False, "redis": str(exc) or type(exc).__name__}, 503)
    return json_response({"ready": True})
