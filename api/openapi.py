"""GET /openapi.json: the API description.

Schemas come from the msgspec types that validate request bodies and shape responses
(`msgspec.json.schema_components`), so they cannot drift from the decoders; the paths are
written by hand, one entry per route, with every status code of the contract: here the probes
and documents, and in one module per group the rest (api/openapi_hapi.py, openapi_jobs.py,
openapi_machines.py, openapi_webhooks.py, built from api/openapi_parts.py). Each error answer
carries one example per body the route can send for that status; docs/api.md lists the same
bodies and tests/unit/test_api_doc.py keeps the two in step. GET /docs renders it
(api/docs_page.py).
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api import openapi_hapi, openapi_jobs, openapi_machines, openapi_placement, openapi_webhooks
from api.openapi_parts import HUB_BUSY, REF, STRING, error_answer, object_answer, ref
from api.requests import json_response
from core import errors
from core.deliveries import WebhookPayload
from core.events import JobEvent, MachineEvent
from core.machine_schemas import MachineList, MachineStatusList
from core.schemas import PATH_PATTERN, JobPage, JobView, PathsRequest, SessionInfo, SpawnRequest, SpawnResponse
from core.webhooks import DeliveryList, WebhookCreated, WebhookList, WebhookRequest


class Error(msgspec.Struct, omit_defaults=True):
    """Every error answer: `error` is fixed per case, `detail` names the field, `code` the cause,
    `limit` the setting of the limit that refused the request (README "Limits")."""

    error: str
    detail: str | None = None
    code: str | None = None
    limit: str | None = None


class PathsResponse(msgspec.Struct):
    exists: dict[str, bool]


class SessionList(msgspec.Struct):
    sessions: list[SessionInfo]


class StopResponse(msgspec.Struct, rename="camel"):
    stopped: bool
    session_id: str
    job_id: str


TYPES: list[Any] = [
    SpawnRequest,
    PathsRequest,
    SpawnResponse,
    PathsResponse,
    MachineList,
    MachineStatusList,
    SessionList,
    StopResponse,
    JobView,
    JobPage,
    MachineEvent,
    JobEvent,
    Error,
    WebhookRequest,
    WebhookCreated,
    WebhookList,
    DeliveryList,
    WebhookPayload,
]
TYPES += openapi_machines.TYPES + openapi_placement.TYPES
# A worktree name slugs to something (core.names.worktree_slug) when it has one of these.
SLUGGABLE = "[A-Za-z0-9\\u0130\\u212a]"
# What str.strip() removes. A model must keep something once stripped, and not start with '-'
# (api/routes.py: it becomes one argument of the CLI, never an option).
STRIPPED = "\\t-\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
MODEL_PATTERN = f"^[{STRIPPED}]*[^{STRIPPED}\\-]"


def paths() -> dict[str, Any]:
    """Every route the hub documents: the parts' routes, and the probes and documents here."""
    found = {
        **openapi_hapi.paths(),
        **openapi_jobs.paths(_enum("JobState")),
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (Bearer MACHINE_HUB_METRICS_TOKEN when that is set)",
                "responses": {
                    "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": STRING}}},
                    "401": error_answer(
                        "MACHINE_HUB_METRICS_TOKEN is set and the request does not carry it",
                        errors.MissingToken(),
                        errors.InvalidToken(),
                    ),
                },
            }
        },
        "/livez": {
            "get": {
                "summary": "Liveness: 200 whenever the process answers",
                "responses": {"200": object_answer("live", {"live": {"const": True}})},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: Redis answers PING and the hub is not draining",
                "responses": {
                    "200": object_answer("ready", {"ready": {"const": True}}),
                    "503": object_answer(
                        "not ready: Redis did not answer, or the hub drains", {"ready": {"const": False}}
                    ),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {
                    "200": object_answer("OpenAPI 3.1", {"openapi": STRING}),
                    "503": error_answer("This hub answers its limit of requests at once", HUB_BUSY),
                },
            }
        },
        "/docs": {
            "get": {
                "summary": "This document, rendered",
                "responses": {
                    "200": {"description": "HTML", "content": {"text/html": {"schema": STRING}}},
                    "503": error_answer("This hub answers its limit of requests at once", HUB_BUSY),
                },
            }
        },
        **openapi_machines.PATHS,
        **openapi_webhooks.paths(),
    }
    openapi_placement.extend(found)
    return found


_schemas: dict[str, Any] = {}


def _enum(name: str) -> list[str]:
    values: list[str] = components()[name]["enum"]
    return values


def components() -> dict[str, Any]:
    if not _schemas:
        _, schemas = msgspec.json.schema_components(TYPES, ref_template=REF)
        # The routes' own rules, beyond what the types check: no blank paths, and a worktree
        # session needs a usable name.
        schemas["SpawnRequest"]["properties"]["directory"]["pattern"] = PATH_PATTERN
        schemas["PathsRequest"]["properties"]["paths"]["items"]["pattern"] = PATH_PATTERN
        schemas["SpawnRequest"]["properties"]["model"]["anyOf"][0]["pattern"] = MODEL_PATTERN
        schemas["SpawnRequest"]["if"] = {
            "required": ["sessionType"],
            "properties": {"sessionType": {"const": "worktree"}},
        }
        schemas["SpawnRequest"]["then"] = {
            "required": ["worktreeName"],
            "properties": {"worktreeName": {"type": "string", "pattern": SLUGGABLE}},
        }
        openapi_machines.adjust(schemas)
        openapi_placement.adjust(schemas)
        # A delivery's data is a MachineEvent or a JobEvent, as GET /api/events sends them.
        schemas["WebhookPayload"]["properties"]["data"] = {"anyOf": [ref("MachineEvent"), ref("JobEvent")]}
        _schemas.update(schemas)
    return _schemas


def spec() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "machine-hub",
            "version": "0.1.0",
            "description": "Start AI coding sessions on any of your machines through one HTTP API.",
        },
        "paths": paths(),
        "webhooks": openapi_webhooks.webhooks(),
        "components": {
            "schemas": components(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


async def openapi_json(request: Request) -> Response:
    return json_response(spec())
