"""Monitoring routes: health, readiness, metrics, the event stream, job listings and the API docs."""

from __future__ import annotations

from starlette.routing import BaseRoute

routes: list[BaseRoute] = []
