"""The API description of the routes that manage machines: display name, drain, directories.

Kept apart from api/openapi.py, which merges these in (`PATHS`, `TYPES`). Each error answer
carries one example per body the route can send, made by `api.errors.error_body` from the
exceptions it raises, as docs/api.md lists them (tests/unit/test_api_doc.py).
"""

from __future__ import annotations

import re
from typing import Any

from api.errors import error_body
from core import errors
from core.machine_schemas import DirectoryListing, DirectoryRequest, MachineUpdate, RecentDirectories
from core.schemas import PATH_PATTERN

TYPES: list[Any] = [MachineUpdate, DirectoryRequest, DirectoryListing, RecentDirectories]
REF = "#/components/schemas/{name}"
SECURED: list[dict[str, list[str]]] = [{"bearer": []}]


def adjust(schemas: dict[str, Any]) -> None:
    """The routes' own rules beyond the types': a folder to list is not blank."""
    schemas["DirectoryRequest"]["properties"]["path"]["pattern"] = PATH_PATTERN


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(name=name)}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _error(description: str, *answers: errors.RequestError) -> dict[str, Any]:
    """An error response with one example per body the route sends for this status."""
    response = _json("Error", description)
    response["content"]["application/json"]["examples"] = {
        re.sub(r"[^a-z0-9]+", "_", body["error"].partition(": ")[0].lower()).strip("_"): {"value": body}
        for body in (error_body(a) for a in answers)
    }
    return response


def _limited_503() -> dict[str, Any]:
    answer = _error("Redis unreachable, or a limit of this hub (`limit` names it)", errors.HubNotConnected())
    retry = {"description": "seconds to wait before trying again", "schema": {"type": "integer", "minimum": 1}}
    answer["headers"] = {"Retry-After": {**retry, "required": False}}
    return answer


MACHINE_ID = {
    "name": "machine_id",
    "in": "path",
    "required": True,
    "description": "Machine id",
    "schema": {"type": "string"},
}
STATE = _json("MachineStatus", "The machine as GET /api/machines?include=offline shows it, after the change")
CHECKS = {
    "401": _error("No token, or one that grants no namespace", errors.MissingToken(), errors.InvalidToken()),
    "403": _error("The machine belongs to another namespace", errors.AccessDenied()),
    "404": _error("No machine with this id is registered", errors.MachineNotFound()),
    "503": _limited_503(),
}
BODY = {
    "408": _error(
        "The body did not arrive within MACHINE_HUB_BODY_TIMEOUT_S",
        errors.RequestTimeout("the body did not arrive within 10 s", limit="body_timeout_s"),
    ),
    "413": _error("The body is over MACHINE_HUB_MAX_BODY_BYTES", errors.BodyTooLarge("the limit is 4194304 bytes")),
}


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


def _drain(summary: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": SECURED,
            "parameters": [MACHINE_ID],
            "responses": {"200": STATE, **CHECKS},
        }
    }


PATHS: dict[str, Any] = {
    "/api/machines/{machine_id}": {
        "patch": {
            "summary": "Name the machine for people (displayName, at most 64 characters; null or blank clears it)",
            "security": SECURED,
            "parameters": [MACHINE_ID],
            "requestBody": _body("MachineUpdate"),
            "responses": {
                "200": STATE,
                "400": _error(
                    "A bad body (detail names the field)",
                    errors.InvalidBody("Expected `str` of length <= 64 - at `$.displayName`"),
                ),
                **BODY,
                **CHECKS,
            },
        }
    },
    "/api/machines/{machine_id}/drain": _drain(
        "Take no new spawns on the machine (machine_draining); path checks, session lists and stops still work"
    ),
    "/api/machines/{machine_id}/undrain": _drain("Take spawns on the machine again"),
    "/api/machines/{machine_id}/recent-directories": {
        "get": {
            "summary": "The machine's recent spawn directories, newest first, distinct, at most 20",
            "security": SECURED,
            "parameters": [MACHINE_ID],
            "responses": {"200": _json("RecentDirectories", "Directories"), **CHECKS},
        }
    },
    "/api/machines/{machine_id}/directory": {
        "post": {
            "summary": "The sub-folders of a folder on the machine (within the agent's roots)",
            "security": SECURED,
            "parameters": [MACHINE_ID],
            "requestBody": _body("DirectoryRequest"),
            "responses": {
                "200": _json("DirectoryListing", "The folder as resolved, its sub-folders by name"),
                "400": _error(
                    "A bad body (detail names the field)", errors.InvalidBody("path must not be empty - at `$.path`")
                ),
                **BODY,
                "500": _error(
                    "No listing: code machine_offline, timeout, directory_not_found, not_a_directory, "
                    "directory_outside_roots or directory_unreadable",
                    errors.DirectoryFailed("/srv/nope does not exist", code="directory_not_found"),
                ),
                **CHECKS,
            },
        }
    },
}
