"""Prometheus metrics: per-process request and job counters, and fleet gauges read from Redis.

Each app has its own CollectorRegistry (tests build many apps). Request and job metrics count
what this hub process served, so scrape every replica. The fleet gauges (machines online, jobs
by state) are computed from Redis at scrape time, so every replica reports the same values:
aggregate them with max() or scrape one replica for them, never sum() across replicas.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import bearer_token
from api.hub import Hub, hub_of
from core.errors import InvalidToken
from core.registry import Fleet

PREFIX = "machine_hub"
UNTRACKED = frozenset({"/metrics", "/livez", "/readyz"})  # probes and scrapes stay out of the counts
UNTIMED = frozenset({"/api/events"})  # long-lived streams: counted, not timed
FLEET_TIMEOUT_S = 5.0
JOB_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_by_hub: dict[str, Metrics] = {}


class FleetCollector(Collector):
    """Yields the gauges of the last Redis read; the /metrics route refreshes it before a scrape."""

    def __init__(self) -> None:
        self.fleet: dict[str, Fleet] | None = None

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(f"{PREFIX}_fleet_up", "1 when the fleet gauges below could be read from Redis")
        up.add_metric([], 0 if self.fleet is None else 1)
        yield up
        if self.fleet is None:
            return
        online = GaugeMetricFamily(f"{PREFIX}_machines_online", "Machines with a live heartbeat", labels=["namespace"])
        registered = GaugeMetricFamily(
            f"{PREFIX}_machines_registered", "Machines registered, online or not", labels=["namespace"]
        )
        jobs = GaugeMetricFamily(
            f"{PREFIX}_jobs",
            "Jobs now queued (mailbox lengths) or running (claimed, no outcome yet)",
            labels=["namespace", "state"],
        )
        finished = CounterMetricFamily(
            f"{PREFIX}_jobs_finished",
            "Jobs that reached a final state (or unknown), from the machines' stats hashes",
            labels=["namespace", "state"],
        )
        for ns, fleet in sorted(self.fleet.items()):
            online.add_metric([ns], fleet.online)
            registered.add_metric([ns], fleet.registered)
            jobs.add_metric([ns, "queued"], fleet.queued)
            jobs.add_metric([ns, "running"], fleet.running)
            for state, count in sorted(fleet.finished.items()):
                finished.add_metric([ns, state], count)
        yield from (online, registered, jobs, finished)


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
        self.fleet = FleetCollector()
        r.register(self.fleet)
        self._scrape = asyncio.Lock()

    def attach(self, hub: Hub) -> None:
        _by_hub[hub.hub_id] = self

    def detach(self, hub: Hub) -> None:
        _by_hub.pop(hub.hub_id, None)

    async def refresh_fleet(self, hub: Hub) -> None:
        try:
            async with asyncio.timeout(FLEET_TIMEOUT_S):
                fleet = {ns: await hub.registry.fleet(ns) for ns in await hub.registry.namespaces()}
        except (RedisError, OSError, TimeoutError):
            self.redis_errors.labels("metrics").inc()
            self.fleet.fleet = None
        else:
            self.fleet.fleet = fleet

    async def exposition(self, hub: Hub) -> bytes:
        async with self._scrape:
            await self.refresh_fleet(hub)
            return generate_latest(self.registry)

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
    hub = hub_of(request)
    token = hub.settings.metrics_token
    if token and not hmac.compare_digest(bearer_token(request).encode(), token.encode()):
        raise InvalidToken()
    body = await metrics_of(request).exposition(hub)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
