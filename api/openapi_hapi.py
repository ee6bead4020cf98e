"""The API description of HAPI's machine routes (the list, spawn, path checks) and of the
sessions beside them; api/openapi.py merges it in.
"""

from __future__ import annotations

from typing import Any

from api.openapi_parts import (
    AUTH,
    BAD_LIMIT,
    BODY,
    DEFAULTS,
    MACHINE,
    MACHINE_BUSY,
    MACHINE_ID,
    MAILBOX_FULL,
    SECURED,
    STRING,
    error_answer,
    job_failed,
    json_answer,
    json_body,
    paging,
    param,
    ref,
)
from api.routes import MAX_IDEMPOTENCY_KEY
from core import errors


def paths() -> dict[str, Any]:
    secured = SECURED
    return {
        "/api/machines": {
            "get": {
                "summary": "Machines of the caller's namespace: online ones, or all with include=offline; paged",
                "security": secured,
                "parameters": [
                    param(
                        "include",
                        "query",
                        "`offline`: also registered machines without a heartbeat, with online, queueDepth, inFlight",
                        {"type": "string", "enum": ["offline"]},
                    ),
                    *paging("Page size: at most this many machines", "The nextCursor of the previous page (opaque)"),
                ],
                "responses": {
                    "200": {
                        "description": (
                            "Machines sorted by id (MachineStatusList with include=offline); nextCursor only when "
                            "more may follow, and a page may hold fewer than `limit` machines then"
                        ),
                        # anyOf: an empty list is both, and every MachineStatus is also a Machine.
                        "content": {
                            "application/json": {"schema": {"anyOf": [ref("MachineList"), ref("MachineStatusList")]}}
                        },
                    },
                    "400": error_answer(
                        "A bad include, limit or cursor (detail names it)",
                        errors.InvalidQuery("include must be one of offline, not 'all' - at `include`"),
                        BAD_LIMIT,
                        errors.InvalidQuery("cursor is not a cursor this API returned - at `cursor`"),
                    ),
                    **AUTH,
                },
            }
        },
        "/api/machines/{machine_id}/spawn": {
            "post": {
                "summary": "Start a session on the machine (at most once)",
                "security": secured,
                "parameters": [
                    MACHINE_ID,
                    param(
                        "Idempotency-Key",
                        "header",
                        "1 to 255 printable ASCII characters; same key and body give the same answer for 24 h",
                        {"type": "string", "pattern": f"^[ -~]{{1,{MAX_IDEMPOTENCY_KEY}}}$"},
                    ),
                ],
                "requestBody": json_body("SpawnRequest"),
                "responses": {
                    "200": json_answer("SpawnResponse", "success true, or false with error and code (job failures)"),
                    "400": error_answer(
                        "A bad body (detail names the field) or a bad Idempotency-Key",
                        errors.InvalidBody("Expected `str`, got `int` - at `$.directory`"),
                        errors.InvalidBody("model must not be empty or start with '-' - at `$.model`"),
                        errors.InvalidHeader(
                            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"
                        ),
                    ),
                    **BODY,
                    "422": error_answer("The Idempotency-Key was used with another body", errors.IdempotencyMismatch()),
                    "429": error_answer(
                        "A spawn rate limit (checked right after the token), or the machine's mailbox is full "
                        "(`limit` names which)",
                        errors.RateLimited(
                            f"at most {DEFAULTS.spawns_per_minute_namespace} spawns per minute per namespace; "
                            "retry in 42 s",
                            limit="spawns_per_minute_namespace",
                            retry_after_s=42,
                        ),
                        errors.RateLimited(
                            f"at most {DEFAULTS.spawns_per_minute_token} spawns per minute per token; retry in 42 s",
                            limit="spawns_per_minute_token",
                            retry_after_s=42,
                        ),
                        MACHINE_BUSY,
                    ),
                    **MACHINE,
                    **AUTH,
                },
            }
        },
        "/api/machines/{machine_id}/paths/exists": {
            "post": {
                "summary": "Which of these paths exist on the machine",
                "security": secured,
                "parameters": [MACHINE_ID],
                "requestBody": json_body("PathsRequest"),
                "responses": {
                    "200": json_answer("PathsResponse", "One key per distinct trimmed path"),
                    "400": error_answer(
                        "A bad body (detail names the field)",
                        errors.InvalidBody("Expected `array` of length >= 1 - at `$.paths`"),
                    ),
                    **BODY,
                    "429": MAILBOX_FULL,
                    "500": job_failed(errors.PathCheckFailed),
                    **MACHINE,
                    **AUTH,
                },
            }
        },
        "/api/machines/{machine_id}/sessions": {
            "get": {
                "summary": "Sessions the machine's agent started that still run",
                "security": secured,
                "parameters": [MACHINE_ID],
                "responses": {
                    "200": json_answer("SessionList", "Sessions"),
                    "429": MAILBOX_FULL,
                    "500": job_failed(errors.SessionsFailed),
                    **MACHINE,
                    **AUTH,
                },
            }
        },
        "/api/machines/{machine_id}/sessions/{session_id}/stop": {
            "post": {
                "summary": "Stop a session (SIGTERM, then SIGKILL after the grace period)",
                "security": secured,
                "parameters": [MACHINE_ID, param("session_id", "path", "Session id", STRING, True)],
                "responses": {
                    "200": json_answer("StopResponse", "Stopped"),
                    "404": error_answer(
                        "No such machine, or no running session with this id on it",
                        errors.MachineNotFound(),
                        errors.SessionNotFound(),
                    ),
                    "403": MACHINE["403"],
                    "429": MAILBOX_FULL,
                    "500": job_failed(errors.StopFailed, claimed=True),
                    **AUTH,
                },
            }
        },
    }
