"""The API description of placement: POST /api/spawn, POST /api/paths/exists and waiting spawns.

Kept apart from api/openapi.py, which merges these in (`TYPES`, `adjust`, `extend`).
"""

from __future__ import annotations

from typing import Any

from api.openapi_parts import AUTH, BAD_LIMIT, BODY, error_answer, json_answer, json_body, paging, ref
from core import errors
from core.placement import (
    Candidate,
    FleetPaths,
    NoMachine,
    PlacedQueued,
    PlacedSpawnRequest,
    PlacedSpawnResponse,
    Placement,
)
from core.schemas import MAX_WAIT_FOR_MACHINE_S, Queued

TYPES: list[Any] = [PlacedSpawnRequest, Placement, PlacedSpawnResponse, PlacedQueued, NoMachine, Candidate]
TYPES += [FleetPaths, Queued]
WAIT = {
    "anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_WAIT_FOR_MACHINE_S}, {"type": "null"}],
    "description": "When the machine is offline (or, on POST /api/spawn, none fits), queue the spawn for it "
    "to come online within this many seconds: 202 at once instead of machine_offline",
}


def adjust(schemas: dict[str, Any]) -> None:
    """The spawn route's body takes waitForMachineS too; the placed body has its rules."""
    spawn = schemas["SpawnRequest"]
    spawn["properties"]["waitForMachineS"] = WAIT
    placed = schemas["PlacedSpawnRequest"]
    for name in ("directory", "model"):
        placed["properties"][name] = spawn["properties"][name]
    placed["if"], placed["then"] = spawn["if"], spawn["then"]
    placed["properties"]["waitForMachineS"] = WAIT


def _queued(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref(name)}}}


def extend(paths: dict[str, Any]) -> None:
    """Add the placement routes, and the waiting answer of the spawn route."""
    spawn = paths["/api/machines/{machine_id}/spawn"]["post"]
    spawn["responses"]["202"] = _queued("Queued", "waitForMachineS and the machine is offline: queued for it")
    paths["/api/spawn"] = {
        "post": {
            "summary": "Start a session on the machine of the namespace that fits best (at most once)",
            "security": spawn["security"],
            "parameters": [p for p in spawn["parameters"] if p["name"] == "Idempotency-Key"],
            "requestBody": json_body("PlacedSpawnRequest"),
            "responses": {
                "200": {
                    "description": "The spawn's answer with machineId, or success false with code no_machine",
                    "content": {
                        "application/json": {"schema": {"anyOf": [ref("PlacedSpawnResponse"), ref("NoMachine")]}}
                    },
                },
                "202": _queued("PlacedQueued", "waitForMachineS and no online machine fits: queued for an offline one"),
                "400": error_answer(
                    "A bad body (detail names the field) or a bad Idempotency-Key",
                    errors.InvalidBody(
                        "waitForMachineS must be whole seconds from 1 to 86400 - at `$.waitForMachineS`"
                    ),
                    errors.InvalidBody("Expected `object | null`, got `array` - at `$.placement`"),
                    errors.InvalidHeader("Idempotency-Key must be 1 to 255 printable ASCII characters"),
                ),
                **BODY,
                "422": spawn["responses"]["422"],
                "429": spawn["responses"]["429"],
                **AUTH,
            },
        }
    }
    paths["/api/paths/exists"] = {
        "post": {
            "summary": "Which of these paths exist on each online machine of the namespace, checked at once",
            "security": spawn["security"],
            "parameters": [
                *paging("At most this many machines", "The nextCursor of the previous answer (opaque)"),
            ],
            "requestBody": json_body("PathsRequest"),
            "responses": {
                "200": json_answer("FleetPaths", "Per machine, one key per distinct trimmed path"),
                "400": error_answer(
                    "A bad body, limit or cursor (detail names it)",
                    errors.InvalidBody("Expected `array` of length >= 1 - at `$.paths`"),
                    BAD_LIMIT,
                ),
                **BODY,
                **AUTH,
            },
        }
    }
