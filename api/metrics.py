"""Prometheus metrics: per-process request and job counters, and fleet gauges read from Redis.

Each app has its own CollectorRegistry (tests build many apps). Request and job metrics count
what this hub process served, so scrape every replica. The fleet gauges (machines online and
registered and drained, jobs finished) are read from Redis's counters at scrape time (one read, however
large the fleet), so every replica reports the same values:
aggregate them with max() or scrape one replica for them, never sum() across replicas.

Namespaces are tenants' names, so series labelled with them are only shown to a scraper that
presented MACHINE_HUB_METRICS_TOKEN; without a token configured, /metrics is open and shows the
fleet summed over namespaces. Concurrent scrapes share one fleet read, reused for
`FLEET_CACHE_S`, so a flood of scrapes costs one Redis read a second and none waits behind
another's lock.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import bearer_token
from api.fleet_metrics import PREFIX, Counters, FleetCollector, RefusalsByNamespace, read_fleet
from api.hub import Hub, hub_of
from core.connections import REDIS_FAILURES
from core.errors import InvalidToken

UNTRACKED = frozenset({"/metrics", "/livez", "/readyz"})  # probes and scrapes stay out of the counts
UNTIMED = frozenset({"/api/events"})  # long-lived streams: counted, not timed
FLEET_TIMEOUT_S = 5.0
FLEET_CACHE_S = 1.0
JOB_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_by_hub: dict[str, Metrics] = {}


class Metrics:
    """The metrics of one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP requests by route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.duration = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "HTTP request duration by route template (event streams excluded)",
            ["method", "route"],
            registry=r,
        )
        self.job_roundtrip = Histogram(
            f"{PREFIX}_job_roundtrip_seconds",
            "Time from submitting a job to its outcome, as the hub saw it, by kind and outcome",
            ["kind", "outcome"],
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.redis_errors = Counter(
            f"{PREFIX}_redis_errors", "Redis errors by where they happened", ["source"], registry=r
        )
        self.streams_open = Gauge(f"{PREFIX}_event_streams_open", "Open GET /api/events streams", registry=r)
        self.refusals = Counter(
            f"{PREFIX}_limit_refusals",
            "Requests and connections refused by a limit, by the limit's setting name",
            ["limit"],
            registry=r,
        )
        # The fleet and the per-namespace refusals, in two views: summed (open) and by namespace.
        self.public = CollectorRegistry()
        self.public_fleet = FleetCollector(by_namespace=False)
        self.public.register(self.public_fleet)
        self.private = CollectorRegistry()
        self.private_fleet = FleetCollector(by_namespace=True)
        self.by_namespace = RefusalsByNamespace()
        self.private.register(self.private_fleet)
        self.private.register(self.by_namespace)
        self._fleet: dict[str, Counters] | None = None
        self._fleet_read_at: float | None = None
        self._reading: asyncio.Future[None] | None = None

    def attach(self, hub: Hub) -> None:
        _by_hub[hub.hub_id] = self

    def detach(self, hub: Hub) -> None:
        _by_hub.pop(hub.hub_id, None)

    def refused(self, limit: str, ns: str | None = None) -> None:
        self.refusals.labels(limit).inc()
        if ns is not None:
            self.by_namespace.add(limit, ns)

    async def _read_fleet(self, hub: Hub) -> None:
        try:
            async with asyncio.timeout(FLEET_TIMEOUT_S):
                self._fleet = await read_fleet(hub)
        except REDIS_FAILURES:  # TimeoutError (the deadline) is an OSError
            self.redis_errors.labels("metrics").inc()
            self._fleet = None
        self._fleet_read_at = time.monotonic()

    async def refresh_fleet(self, hub: Hub) -> dict[str, Counters] | None:
        """The fleet as of at most FLEET_CACHE_S ago; concurrent callers share one read."""
        fresh = self._fleet_read_at is not None and time.monotonic() - self._fleet_read_at < FLEET_CACHE_S
        if not fresh:
            if self._reading is None:
                self._reading = asyncio.ensure_future(self._read_fleet(hub))
                self._reading.add_done_callback(self._read_done)
            # Shielded: a scraper that hangs up does not cancel the read the others wait for.
            await asyncio.shield(self._reading)
        return self._fleet

    def _read_done(self, future: asyncio.Future[None]) -> None:
        self._reading = None

    async def exposition(self, hub: Hub, *, by_namespace: bool) -> bytes:
        fleet = await self.refresh_fleet(hub)
        self.public_fleet.fleet = self.private_fleet.fleet = fleet
        view = self.private if by_namespace else self.public
        return generate_latest(self.registry) + generate_latest(view)

    def count_redis_errors(
        self, handler: Callable[[Request, Exception], Awaitable[Response]]
    ) -> Callable[[Request, Exception], Awaitable[Response]]:
        """Wrap the hub's Redis error handler so every Redis failure of a request is counted."""

        async def counted(request: Request, exc: Exception) -> Response:
            self.redis_errors.labels("request").inc()
            return await handler(request, exc)

        return counted


def metrics_of(request: Request) -> Metrics:
    metrics = request.state.metrics
    assert isinstance(metrics, Metrics)
    return metrics


def observe_job(hub: Hub, kind: str, outcome: str, seconds: float) -> None:
    metrics = _by_hub.get(hub.hub_id)
    if metrics is not None:
        metrics.job_roundtrip.labels(kind, outcome).observe(seconds)


def route_template(scope: Scope) -> str:
    """The path template of the route that served `scope` ("other" when none did): bounded labels.

    Read after the app ran: the router records the route it matched in the scope.
    """
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else "other"


class MetricsMiddleware:
    """Counts and times every HTTP request by method, route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNTRACKED:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        status = 500
        started = time.perf_counter()

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = route_template(scope)
            self.metrics.requests.labels(method, route, str(status)).inc()
            if route not in UNTIMED:
                self.metrics.duration.labels(method, route).observe(time.perf_counter() - started)


async def metrics_endpoint(request: Request) -> Response:
    """Open without MACHINE_HUB_METRICS_TOKEN (namespaces summed away); with it, the token is
    required and the series by namespace are shown."""
    hub = hub_of(request)
    token = hub.settings.metrics_token
    if token and not hmac.compare_digest(bearer_token(request).encode(), token.encode()):
        raise InvalidToken()
    body = await metrics_of(request).exposition(hub, by_namespace=bool(token))
    return Response(body, media_type=CONTENT_TYPE_LATEST)
