"""The dashboard page the hub serves at /dashboard."""

from __future__ import annotations

from starlette.routing import BaseRoute

routes: list[BaseRoute] = []
