"""The fleet routes' contract on fakeredis: display name, drain, recent directories, directory
listings; the checks' order (401, 503, 404/403, 400), each change counted and published once."""

from __future__ import annotations

import asyncio

import fakeredis
import msgspec
import pytest
from starlette.testclient import TestClient

from core import stats
from core.events import MachineEvent, decode
from core.keys import Keys
from core.lua import Scripts
from core.registry import Registry
from core.schemas import JobKind, JobRecord, JobState, SpawnRecord
from core.settings import Settings
from tests.unit.test_monitoring import TEAM, broken_app, job_id
from tests.unit.test_routes import AUTH, register

ROUTES = [
    ("PATCH", "", {"displayName": "box"}),
    ("POST", "/drain", None),
    ("POST", "/undrain", None),
    ("GET", "/recent-directories", None),
    ("POST", "/directory", {"path": "/"}),
]
BAD_BODIES = [("PATCH", "", {"displayName": 5}), ("POST", "/directory", {"path": "  "})]


def call(client: TestClient, method: str, path: str, body: object = None, headers: dict[str, str] = AUTH) -> object:
    return client.request(method, f"/api/machines/{path}", headers=headers, json=body)


def machine_events(sync_redis: fakeredis.FakeRedis, keys: Keys, machine_id: str) -> list[str]:
    found = []
    for _, fields in sync_redis.xrange(keys.events("default")):
        event = decode(fields[b"e"])
        if isinstance(event, MachineEvent) and event.machine_id == machine_id:
            found.append(event.state)
    return found


def drained_count(sync_redis: fakeredis.FakeRedis, keys: Keys, ns: str = "default") -> int:
    return int(sync_redis.hget(keys.stats(), stats.field(ns, stats.DRAINED)) or 0)


@pytest.mark.parametrize(("method", "suffix", "body"), ROUTES)
def test_every_route_needs_a_token_then_redis(settings: Settings, method: str, suffix: str, body: object) -> None:
    with broken_app(settings) as client:
        assert client.request(method, f"/api/machines/m1{suffix}", json=body).status_code == 401
        r = client.request(method, f"/api/machines/m1{suffix}", headers=AUTH, json=body)
        assert r.status_code == 503 and r.json() == {"error": "Hub not connected"}


@pytest.mark.parametrize(("method", "suffix", "body"), ROUTES + BAD_BODIES)
def test_unknown_machine_is_404_and_anothers_403_before_the_body(
    client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys, method: str, suffix: str, body: object
) -> None:
    register(sync_redis, keys, "team", "theirs", online=True)
    for machine_id, status, error in [("nope", 404, "Machine not found"), ("{bad}", 404, "Machine not found")]:
        r = client.request(method, f"/api/machines/{machine_id}{suffix}", headers=AUTH, json=body)
        assert (r.status_code, r.json()) == (status, {"error": error})
    r = client.request(method, f"/api/machines/theirs{suffix}", headers=AUTH, json=body)
    assert (r.status_code, r.json()) == (403, {"error": "Access denied"})
    assert sync_redis.hgetall(keys.reg("team", "theirs")).keys() == {b"addedMs", b"namespace"}, "nothing written"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"nope", "the body is not valid JSON"),
        ({}, "Object missing required field `displayName`"),
        ({"displayName": "x" * 65}, "Expected `str` of length <= 64 - at `$.displayName`"),
        ({"displayName": "tab\there"}, "at `$.displayName`"),
        ({"displayName": 5}, "Expected `str | null`, got `int` - at `$.displayName`"),
    ],
)
def test_a_bad_display_name_is_400(
    client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys, body: object, detail: str
) -> None:
    register(sync_redis, keys, "default", "m1")
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = client.patch("/api/machines/m1", headers=AUTH, **kwargs)  # type: ignore[arg-type]
    assert r.status_code == 400 and r.json()["error"] == "Invalid body", r.text
    assert detail in r.json()["detail"]


def test_display_name_is_set_once_trimmed_and_cleared(
    client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys
) -> None:
    register(sync_redis, keys, "default", "m1")
    for _ in range(2):
        r = client.patch("/api/machines/m1", headers=AUTH, json={"displayName": " Kitchen Mac \u00e9 "})
        assert r.status_code == 200 and r.json()["displayName"] == "Kitchen Mac \u00e9"
    assert r.json()["id"] == "m1" and r.json()["online"] is False, "the answer is the machine's listing view"
    assert machine_events(sync_redis, keys, "m1") == ["updated"]
    for clear in (None, "   ", ""):
        r = client.patch("/api/machines/m1", headers=AUTH, json={"displayName": clear})
        assert r.status_code == 200 and r.json()["displayName"] is None
    assert machine_events(sync_redis, keys, "m1") == ["updated", "updated"]
    assert client.patch("/api/machines/m1", headers=AUTH, json={"displayName": "é" * 64}).status_code == 200


def test_drain_and_undrain_flip_once_and_count_once(
    client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys
) -> None:
    register(sync_redis, keys, "default", "m1", online=True)
    register(sync_redis, keys, "default", "m2", online=True)
    for _ in range(3):
        r = client.post("/api/machines/m1/drain", headers=AUTH)
        assert r.status_code == 200 and r.json()["drained"] is True
    client.post("/api/machines/m2/drain", headers=AUTH)
    assert drained_count(sync_redis, keys) == 2
    assert machine_events(sync_redis, keys, "m1") == ["updated"]
    listed = {m["id"]: m["drained"] for m in client.get("/api/machines", headers=AUTH).json()["machines"]}
    assert listed == {"m1": True, "m2": True}
    r = client.post("/api/machines/m1/spawn", headers=AUTH, json={"directory": "/x"})
    assert r.json() == {
        "success": False,
        "error": "The machine is drained: it takes no new spawns",
        "code": "machine_draining",
    }
    for _ in range(2):
        assert client.post("/api/machines/m1/undrain", headers=AUTH).json()["drained"] is False
    assert drained_count(sync_redis, keys) == 1
    assert machine_events(sync_redis, keys, "m1") == ["updated", "updated"]
    assert "machine_hub_machines_drained 1.0" in client.get("/metrics").text


def test_a_drained_machine_unregistered_takes_its_count_along(
    client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys
) -> None:
    register(sync_redis, keys, "default", "m1")
    register(sync_redis, keys, "default", "m2")
    client.post("/api/machines/m1/drain", headers=AUTH)
    assert drained_count(sync_redis, keys) == 1
    server = sync_redis.connection_pool.connection_kwargs["server"]

    async def unregister(machine_id: str) -> None:
        redis = fakeredis.FakeAsyncRedis(server=server)
        try:
            await Registry(redis, keys, Scripts(redis, can_load=True)).unregister("default", machine_id)
        finally:
            await redis.aclose()

    asyncio.run(unregister("m2"))  # not drained: the count stays
    assert drained_count(sync_redis, keys) == 1
    asyncio.run(unregister("m1"))
    assert drained_count(sync_redis, keys) == 0
    assert not sync_redis.exists(keys.reg("default", "m1"), keys.info("default", "m1"))
    assert client.post("/api/machines/m1/drain", headers=AUTH).status_code == 404


def spawned(
    sync_redis: fakeredis.FakeRedis, keys: Keys, machine_id: str, directory: str, created: int, state: str
) -> None:
    jid = job_id(machine_id)
    sync_redis.zadd(keys.jobs("default"), {jid: created})
    args = msgspec.json.encode(SpawnRecord(directory=directory)).decode()
    record = JobRecord(kind=JobKind.SPAWN, machine_id=machine_id, state=JobState(state), args=args, created_ms=created)
    sync_redis.set(keys.job("default", machine_id, jid), msgspec.json.encode(record))


def test_recent_directories_are_the_newest_successful_spawns_each_once(
    client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys
) -> None:
    register(sync_redis, keys, "default", "m1")
    register(sync_redis, keys, "default", "m2")
    assert client.get("/api/machines/m1/recent-directories", headers=AUTH).json() == {"directories": []}
    for i, (machine, directory, state) in enumerate(
        [
            ("m1", "~/a", "succeeded"),
            ("m1", "~/b", "succeeded"),
            ("m1", "~/a", "succeeded"),
            ("m1", "~/failed", "failed"),
            ("m2", "~/theirs", "succeeded"),
            ("m1", "~/running", "running"),
        ]
    ):
        spawned(sync_redis, keys, machine, directory, 1_700_000_000_000 + i, state)
    for i in range(30):
        spawned(sync_redis, keys, "m1", f"/d{i}", 1_700_000_001_000 + i, "succeeded")
    got = client.get("/api/machines/m1/recent-directories", headers=AUTH).json()["directories"]
    assert [d["path"] for d in got] == [f"/d{i}" for i in range(29, 9, -1)], "20, newest first"
    assert got[0]["lastSpawnedAt"] == 1_700_000_001_029
    sync_redis.delete(keys.jobs("default"))
    for i, (directory, state) in enumerate([("~/a", "succeeded"), ("~/b", "succeeded"), ("~/a", "succeeded")]):
        spawned(sync_redis, keys, "m1", directory, 1_700_000_000_000 + i, state)
    got = client.get("/api/machines/m1/recent-directories", headers=AUTH).json()["directories"]
    assert got == [
        {"path": "~/a", "lastSpawnedAt": 1_700_000_000_002},
        {"path": "~/b", "lastSpawnedAt": 1_700_000_000_001},
    ]


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"path": "   "}, "path must not be empty - at `$.path`"),
        ({}, "Object missing required field `path`"),
        ({"path": "/x", "hidden": "yes"}, "Expected `bool`, got `str` - at `$.hidden`"),
        ({"path": "é" * 2049}, "path is longer than 4096 bytes - at `$.path`"),
    ],
)
def test_a_bad_directory_body_is_400(
    client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys, body: object, detail: str
) -> None:
    register(sync_redis, keys, "default", "m1", online=True)
    r = client.post("/api/machines/m1/directory", headers=AUTH, json=body)
    assert r.status_code == 400 and r.json() == {"error": "Invalid body", "detail": detail}


def test_a_directory_of_an_offline_machine_is_500_machine_offline(
    client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys
) -> None:
    register(sync_redis, keys, "default", "m1")
    r = client.post("/api/machines/m1/directory", headers=AUTH, json={"path": "~"})
    assert r.status_code == 500
    assert r.json() == {"error": "Failed to list directory: machine m1 is offline", "code": "machine_offline"}


def test_team_sees_its_own_drained_machine(client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys) -> None:
    register(sync_redis, keys, "team", "theirs", online=True)
    assert client.post("/api/machines/theirs/drain", headers=TEAM).json()["drained"] is True
    assert drained_count(sync_redis, keys, "team") == 1 and drained_count(sync_redis, keys) == 0
