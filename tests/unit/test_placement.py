"""POST /api/spawn and POST /api/paths/exists refuse bad input with precise 400s (fakeredis); what
they choose and wait for runs end to end (tests/e2e/test_placement.py)."""

from __future__ import annotations

import dataclasses
from typing import Any

import fakeredis
import pytest
from starlette.testclient import TestClient

from core.keys import Keys
from core.listing import MachineRow
from core.machine_schemas import Beat, Health, MachineInfo
from core.placement import Placement, check_placement, preference, refusal
from tests.machines import add_sync
from tests.unit.conftest import SECRET

AUTH = {"Authorization": f"Bearer {SECRET}"}
WAIT = "$.waitForMachineS"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"waitForMachineS": 0}, f"waitForMachineS must be whole seconds from 1 to 86400 - at `{WAIT}`"),
        ({"waitForMachineS": 86_401}, f"waitForMachineS must be whole seconds from 1 to 86400 - at `{WAIT}`"),
        ({"waitForMachineS": "5"}, f"Expected `float | null`, got `str` - at `{WAIT}`"),
        ({"waitForMachineS": 1.5}, f"waitForMachineS must be whole seconds from 1 to 86400 - at `{WAIT}`"),
        ({"waitForMachineS": True}, f"Expected `float | null`, got `bool` - at `{WAIT}`"),
        ({"placement": []}, "Expected `object | null`, got `array` - at `$.placement`"),
        ({"placement": {"label": {}}}, "Object contains unknown field `label` - at `$.placement`"),
        (
            {"placement": {"labels": {"bad key": "x"}}},
            "Expected `str` matching regex '^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$' - at `key` in `$.placement.labels`",
        ),
        ({"placement": {"labels": {"gpu": 1}}}, "Expected `str`, got `int` - at `$.placement.labels[...]`"),
        (
            {"placement": {"labels": {"gpu": "a b"}}},
            "Expected `str` matching regex '^[A-Za-z0-9._:/@+-]{1,128}$' - at `$.placement.labels[...]`",
        ),
        ({"placement": {"machines": []}}, "Expected `array` of length >= 1 - at `$.placement.machines`"),
        (
            {"placement": {"machines": ["a b"]}},
            "Expected `str` matching regex '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$' - at `$.placement.machines[0]`",
        ),
        ({"placement": {"machines": "m1"}}, "Expected `array | null`, got `str` - at `$.placement.machines`"),
        ({"directory": " "}, "directory must not be empty - at `$.directory`"),
    ],
)
def test_a_bad_placed_spawn_is_400_naming_the_field(client: TestClient, body: dict[str, Any], detail: str) -> None:
    r = client.post("/api/spawn", json={"directory": "/srv/app", **body}, headers=AUTH)
    assert (r.status_code, r.json()) == (400, {"error": "Invalid body", "detail": detail})


def test_a_machine_spawn_checks_the_wait_too(client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys) -> None:
    add_sync(sync_redis, keys, "default", "m1", online=False)
    r = client.post("/api/machines/m1/spawn", json={"directory": "/srv", "waitForMachineS": 0}, headers=AUTH)
    assert (r.status_code, r.json()["detail"]) == (
        400,
        f"waitForMachineS must be whole seconds from 1 to 86400 - at `{WAIT}`",
    )
    r = client.post("/api/machines/nope/spawn", json={"directory": "/srv", "waitForMachineS": 0}, headers=AUTH)
    assert (r.status_code, r.json()) == (404, {"error": "Machine not found"})  # 404 before 400, as always


def test_an_empty_namespace_has_no_machine_and_no_paths(client: TestClient) -> None:
    r = client.post("/api/spawn", json={"directory": "/srv/app"}, headers=AUTH)
    assert r.json() == {"success": False, "code": "no_machine", "error": "No machine to consider", "candidates": []}
    r = client.post("/api/paths/exists", json={"paths": ["/srv"]}, headers=AUTH)
    assert r.json() == {"machines": {}, "unanswered": {}}


@pytest.mark.parametrize(
    ("query", "body", "detail"),
    [
        ("?limit=0", {"paths": ["/x"]}, "limit must be an integer from 1 to 1000 - at `limit`"),
        ("?cursor=%%%", {"paths": ["/x"]}, "cursor is not a cursor this API returned - at `cursor`"),
        ("", {"paths": []}, "Expected `array` of length >= 1 - at `$.paths`"),
        ("", {"paths": [" "]}, "path must not be empty - at `$.paths[0]`"),
    ],
)
def test_bad_fleet_path_checks_are_400(client: TestClient, query: str, body: object, detail: str) -> None:
    r = client.post(f"/api/paths/exists{query}", json=body, headers=AUTH)
    assert r.status_code == 400 and r.json()["detail"] == detail


def test_the_fleet_routes_need_a_token(client: TestClient) -> None:
    for path in ("/api/spawn", "/api/paths/exists"):
        assert client.post(path, json={}).json() == {"error": "Missing authorization token"}


def test_named_machines_collapse_in_order() -> None:
    assert check_placement(Placement(machines=["b", "a", "b"])) == ["b", "a"]
    assert check_placement(Placement()) is None


def row(machine_id: str, *, sessions: int = 0, load: float | None = None, **info: Any) -> MachineRow:
    health = Health(cores=2, load1=load, memory_used_bytes=None, memory_total_bytes=None, uptime_seconds=None)
    return MachineRow(
        machine_id=machine_id,
        online=info.pop("online", True),
        info=MachineInfo(hostname="h", platform="linux", version="1", **{"agents": {"claude": "1"}, **info}),
        last_seen=1,
        beat=Beat(ttl_ms=1000, sessions=sessions, health=health),
        queue_depth=0,
        display_name=None,
        drained=False,
    )


def test_fewest_sessions_win_then_lowest_load_then_id() -> None:
    rows = [row("c", sessions=1, load=0.0), row("b", load=2.0), row("a", load=None), row("d", load=0.5)]
    assert [r.machine_id for r in sorted(rows, key=preference)] == ["d", "b", "a", "c"]


def test_each_refusal_has_one_reason_in_order() -> None:
    assert refusal(row("m", online=False, agents=None), "claude", {}) == "offline"
    assert refusal(row("m", online=False), "claude", {}, offline_ok=True) is None
    assert refusal(dataclasses.replace(row("m", agents=None), drained=True), "claude", {}) == "draining"
    assert refusal(row("m", agents=None), "claude", {}) == "agent_not_installed"
    assert refusal(row("m", labels={"gpu": "a"}), "codex", {"gpu": "b"}) == "agent_not_installed"
    assert refusal(row("m", labels={"gpu": "a"}), "claude", {"gpu": "b"}) == "labels_mismatch"
    assert refusal(row("m", sessions=2, max_sessions=2), "claude", {}) == "full"
    assert refusal(row("m", sessions=1, max_sessions=2, labels={"gpu": "a", "z": "1"}), "claude", {"gpu": "a"}) is None


def test_a_whole_float_wait_is_the_same_body(client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys) -> None:
    add_sync(sync_redis, keys, "default", "m1", online=False)
    headers = {**AUTH, "Idempotency-Key": "k1"}
    first = client.post("/api/machines/m1/spawn", json={"directory": "/srv", "waitForMachineS": 60.0}, headers=headers)
    assert first.status_code == 202 and first.json()["state"] == "queued", first.text
    again = client.post("/api/machines/m1/spawn", json={"directory": "/srv", "waitForMachineS": 60}, headers=headers)
    assert (again.status_code, again.json()) == (202, first.json())
