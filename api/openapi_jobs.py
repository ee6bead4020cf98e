"""The API description of the job routes and the event stream; api/openapi.py merges it in."""

from __future__ import annotations

from typing import Any

from api.events import RETRY_AFTER_S, SHUTTING_DOWN, STREAM_ID
from api.history import CURSOR_PATTERN, MAX_LIMIT
from api.openapi_parts import AUTH, DEFAULTS, MACHINE, SECURED, STRING, error_answer, json_answer, param, ref
from core import errors

STREAM_ID_SCHEMA = {"type": "string", "pattern": STREAM_ID.pattern}
RESUME_ID = {"type": "string", "pattern": f"^({STREAM_ID.pattern[1:-1]})?$", "description": "empty: from now on"}


def _sse(kind: str) -> dict[str, Any]:
    """One Server-Sent Event as clients parse it (OpenAPI 3.2's SSE item shape): data is JSON."""
    data = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": ref("MachineEvent" if kind == "machine" else "JobEvent"),
    }
    return {
        "type": "object",
        "required": ["event", "data", "id"],
        "properties": {"event": {"const": kind}, "data": data, "id": STREAM_ID_SCHEMA},
    }


def paths(job_states: list[str]) -> dict[str, Any]:
    secured = SECURED
    return {
        "/api/jobs": {
            "get": {
                "summary": "Recent spawn and stop jobs of the namespace, newest first, paginated",
                "security": secured,
                "parameters": [
                    param("machineId", "query", "Only this machine's jobs", {"type": "string", "minLength": 1}),
                    param("state", "query", "Only jobs in this state", {"type": "string", "enum": job_states}),
                    param("kind", "query", "Only jobs of this kind", {"type": "string", "enum": ["spawn", "stop"]}),
                    param(
                        "limit",
                        "query",
                        "Page size",
                        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50},
                    ),
                    param(
                        "cursor",
                        "query",
                        "nextCursor of the previous page: `<created ms>:<job id>`",
                        {"type": "string", "pattern": f"^({CURSOR_PATTERN[1:-1]})?$"},
                    ),
                ],
                "responses": {
                    "200": json_answer("JobPage", "Jobs and the cursor of the next page (null on the last)"),
                    "400": error_answer(
                        "A bad query parameter (detail names it)",
                        errors.InvalidQuery(f"limit must be an integer from 1 to {MAX_LIMIT} - at `limit`"),
                        errors.InvalidQuery("cursor is not a cursor this API returned - at `cursor`"),
                    ),
                    **MACHINE,
                    **AUTH,
                },
            }
        },
        "/api/jobs/{job_id}": {
            "get": {
                "summary": "One spawn or stop job's state and result",
                "security": secured,
                "parameters": [param("job_id", "path", "Job id", STRING, True)],
                "responses": {
                    "200": json_answer("JobView", "The job"),
                    "403": MACHINE["403"],
                    "404": error_answer(
                        "No such job in this namespace, or its record has expired", errors.JobNotFound()
                    ),
                    **AUTH,
                },
            }
        },
        "/api/events": {
            "get": {
                "summary": "Server-Sent Events of the namespace: `event: machine|job`, `id:` stream id, `data:` JSON",
                "description": (
                    "Token from the Authorization header only (`?token=` is refused with 400). Resume with "
                    "Last-Event-ID. Each event below is one SSE event: `data` holds a MachineEvent or JobEvent."
                ),
                "security": secured,
                "parameters": [
                    param("Last-Event-ID", "header", "Resume after this event id", RESUME_ID),
                    param("lastEventId", "query", "Same, for clients that cannot set headers", RESUME_ID),
                ],
                "responses": {
                    "200": {
                        "description": "text/event-stream; one item per event",
                        "content": {"text/event-stream": {"schema": {"oneOf": [_sse("machine"), _sse("job")]}}},
                    },
                    "400": error_answer(
                        "A token in the URL, or a malformed Last-Event-ID",
                        errors.InvalidQuery(
                            "tokens are not accepted in URLs: send Authorization: Bearer <token> - at `token`"
                        ),
                        errors.InvalidHeader("Last-Event-ID must be an event id of this stream, like 1764369345123-0"),
                    ),
                    "401": AUTH["401"],
                    "429": error_answer(
                        "This token or namespace holds its limit of event streams on this hub (`limit` names which)",
                        errors.TooManyStreams(
                            f"this token has {DEFAULTS.max_event_streams_per_token} event streams open on this hub; "
                            "close one",
                            limit="max_event_streams_per_token",
                            retry_after_s=RETRY_AFTER_S,
                        ),
                        errors.TooManyStreams(
                            f"this namespace has {DEFAULTS.max_event_streams_per_namespace} event streams open on "
                            "this hub; close one",
                            limit="max_event_streams_per_namespace",
                            retry_after_s=RETRY_AFTER_S,
                        ),
                    ),
                    "503": error_answer(
                        "Redis unreachable, this hub's event streams all taken, or the hub is shutting down",
                        errors.HubNotConnected(),
                        errors.HubStreamsFull(
                            f"this hub serves its limit of {DEFAULTS.max_event_streams} event streams; retry later "
                            "or on another hub",
                            limit="max_event_streams",
                            retry_after_s=RETRY_AFTER_S,
                        ),
                        SHUTTING_DOWN,
                    ),
                },
            }
        },
    }
