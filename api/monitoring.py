"""Monitoring routes: health, readiness, metrics, the event stream, job listings and the API docs."""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from api import docs_page, events, health, history, metrics, openapi

routes: list[BaseRoute] = [
    Route("/api/jobs", history.list_jobs, methods=["GET"]),
    Route("/api/events", events.events, methods=["GET"]),
    Route("/metrics", metrics.metrics_endpoint, methods=["GET"]),
    Route("/livez", health.livez, methods=["GET"]),
    Route("/readyz", health.readyz, methods=["GET"]),
    Route("/openapi.json", openapi.openapi_json, methods=["GET"]),
    Route("/docs", docs_page.docs, methods=["GET"]),
]
