"""The hub's app factory: routes, the error table, the body limit and the reply reader's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TypedDict

from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from api import dashboard, directories, jobs, machine_controls, monitoring, placement, routes, sessions, webhooks
from api.errors import EXCEPTION_HANDLERS, redis_error
from api.events import Streams
from api.hub import Hub
from api.limits import BodyLimit, InFlightLimit, spawn_rate_limited
from api.metrics import Metrics, MetricsMiddleware
from core.connections import blocking_client, request_client
from core.ratelimits import RateLimiter
from core.settings import Settings

log = logging.getLogger(__name__)


class State(TypedDict):
    hub: Hub
    metrics: Metrics
    streams: Streams
    rate_limiter: RateLimiter


def create_app(settings: Settings, *, redis: Redis | None = None, blocking: Redis | None = None) -> Starlette:
    """Tests may pass their own clients (fakeredis); otherwise they come from `settings`."""
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        hub = Hub(settings, redis or request_client(settings), blocking or blocking_client(settings))
        if not settings.cli_api_token:
            log.warning("CLI_API_TOKEN is not set: only issued tokens (machine-hub token create) are accepted")
        streams = Streams(settings, redis)  # with a test's client, streams share it
        metrics.attach(hub)
        reader = asyncio.create_task(hub.inbox.run(), name="inbox-reader")
        try:
            limiter = RateLimiter(hub.redis, settings.key_prefix)
            yield {"hub": hub, "metrics": metrics, "streams": streams, "rate_limiter": limiter}
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            metrics.detach(hub)
            if redis is None:
                await streams.aclose()
            await hub.redis.aclose()
            await hub.blocking.aclose()

    app = Starlette(
        routes=[
            Route("/api/machines", routes.list_machines, methods=["GET"]),
            Route("/api/machines/{machine_id}/spawn", spawn_rate_limited(routes.spawn, settings), methods=["POST"]),
            Route("/api/spawn", spawn_rate_limited(placement.spawn_anywhere, settings), methods=["POST"]),
            Route("/api/paths/exists", placement.paths_everywhere, methods=["POST"]),
            Route("/api/machines/{machine_id}/paths/exists", routes.paths_exists, methods=["POST"]),
            Route("/api/machines/{machine_id}/sessions", sessions.list_sessions, methods=["GET"]),
            Route("/api/machines/{machine_id}/sessions/{session_id}/stop", sessions.stop_session, methods=["POST"]),
            Route("/api/machines/{machine_id}", machine_controls.update_machine, methods=["PATCH"]),
            Route("/api/machines/{machine_id}/drain", machine_controls.drain, methods=["POST"]),
            Route("/api/machines/{machine_id}/undrain", machine_controls.undrain, methods=["POST"]),
            Route("/api/machines/{machine_id}/recent-directories", directories.recent_directories, methods=["GET"]),
            Route("/api/machines/{machine_id}/directory", directories.list_directory, methods=["POST"]),
            Route("/api/jobs/{job_id}", jobs.get_job, methods=["GET"]),
            *monitoring.routes,
            *webhooks.routes,
            *dashboard.routes,
        ],
        middleware=[
            Middleware(MetricsMiddleware, metrics=metrics),
            Middleware(InFlightLimit, limit=settings.max_requests_in_flight, metrics=metrics),
            Middleware(
                BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s, metrics=metrics
            ),
        ],
        exception_handlers={
            cls: metrics.count_redis_errors(handler) if handler is redis_error else handler
            for cls, handler in EXCEPTION_HANDLERS.items()
        },
        lifespan=lifespan,
    )
    app.state.metrics = metrics  # for the server's connection limits (api/protocol.py)
    return app
