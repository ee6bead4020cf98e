"""Monitoring routes on fakeredis: machine listing with offline ones, job listing, metrics, health, docs."""

from __future__ import annotations

import random
import re
import uuid

import fakeredis
import pytest
from sse_starlette.sse import AppStatus
from starlette.testclient import TestClient

from api.app import create_app
from api.history import decode_cursor, encode_cursor
from core.history import JobHistory
from core.keys import Keys
from core.settings import Settings
from tests.unit.conftest import SECRET
from tests.unit.test_routes import AUTH, register

TEAM = {"Authorization": f"Bearer {SECRET}:team"}


def job_id(machine_id: str) -> str:
    return f"{machine_id}.{uuid.uuid4().hex}"


def add_job(
    redis: fakeredis.FakeRedis,
    keys: Keys,
    machine_id: str,
    created: int,
    *,
    ns: str = "default",
    kind: str = "spawn",
    state: str = "succeeded",
    result: bytes | None = b'{"success":true}',
    finished: int | None = None,
    jid: str | None = None,
    stored: bool = True,
) -> str:
    jid = jid or job_id(machine_id)
    redis.zadd(keys.history(ns, machine_id), {jid: created})
    if stored:
        fields: dict[str, object] = {"kind": kind, "machineId": machine_id, "state": state, "createdMs": created}
        if finished is not None:
            fields["finishedMs"] = finished
            fields["claimedMs"] = created + 1
        if result is not None:
            fields["result"] = result
        redis.hset(keys.job(ns, machine_id, jid), mapping=fields)  # type: ignore[arg-type]
    return jid


# GET /api/machines?include=offline


def test_include_offline_lists_every_machine_with_counts(
    client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys
) -> None:
    register(sync_redis, keys, "default", "on", online=True)
    register(sync_redis, keys, "default", "off")
    register(sync_redis, keys, "default", "never")
    register(sync_redis, keys, "team", "theirs", online=True)
    sync_redis.hset(keys.info("default", "off"), "lastSeenMs", 1690000000000)
    sync_redis.lpush(keys.mailbox("default", "on"), b"a", b"b")
    sync_redis.sadd(keys.running("default", "on"), "j1")
    r = client.get("/api/machines?include=offline", headers=AUTH)
    assert r.status_code == 200
    machines = {m["id"]: m for m in r.json()["machines"]}
    assert list(machines) == ["never", "off", "on"]
    meta = {"hostname": "h", "platform": "linux", "version": "1", "launcher": "pty"}
    assert machines["on"] == {
        "id": "on",
        "namespace": "default",
        "metadata": meta,
        "lastSeen": 1700000000000,
        "online": True,
        "queueDepth": 2,
        "inFlight": 1,
    }
    assert machines["off"]["online"] is False
    assert machines["off"]["lastSeen"] == 1690000000000
    assert machines["off"]["metadata"] == meta
    assert machines["never"]["lastSeen"] is None
    assert [m["id"] for m in client.get("/api/machines?include=offline", headers=TEAM).json()["machines"]] == ["theirs"]


def test_without_include_the_listing_is_unchanged(
    client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys
) -> None:
    register(sync_redis, keys, "default", "on", online=True)
    register(sync_redis, keys, "default", "off")
    assert client.get("/api/machines", headers=AUTH).content == (
        b'{"machines":[{"id":"on","namespace":"default","metadata":{"hostname":"h","platform":"linux",'
        b'"version":"1","launcher":"pty"},"lastSeen":1700000000000}]}'
    )


@pytest.mark.parametrize("query", ["include=online", "include=", "include=offline,all", "include=offline&include=x"])
def test_unknown_include_is_400(client: TestClient, query: str) -> None:
    r = client.get(f"/api/machines?{query}", headers=AUTH)
    assert r.status_code == 400
    assert r.json()["error"] == "Invalid query"
    assert "include" in r.json()["detail"]


def test_include_needs_auth_first(client: TestClient) -> None:
    assert client.get("/api/machines?include=bogus").status_code == 401


# GET /api/jobs


def test_jobs_newest_first_across_machines_with_pagination(
    client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys
) -> None:
    register(sync_redis, keys, "default", "a")
    register(sync_redis, keys, "default", "b")
    expected = []
    for i in range(7):
        expected.append(add_job(sync_redis, keys, "a" if i % 2 else "b", 1000 + i, finished=1000 + i + 5))
    expected.append(add_job(sync_redis, keys, "a", 1006))  # a tie with the newest job of b
    expected.sort(key=lambda j: (int(sync_redis.zscore(keys.history("default", j.split(".")[0]), j) or 0), j))
    expected.reverse()
    add_job(sync_redis, keys, "a", 999, stored=False)  # expired record: skipped
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        url = "/api/jobs?limit=3" + (f"&cursor={cursor}" if cursor else "")
        r = client.get(url, headers=AUTH)
        assert r.status_code == 200, r.text
        body = r.json()
        seen.extend(j["id"] for j in body["jobs"])
        pages += 1
        cursor = body["nextCursor"]
        if cursor is None:
            break
    assert seen == expected
    assert pages == 3
    first = client.get("/api/jobs?limit=1", headers=AUTH).json()["jobs"][0]
    assert set(first) == {
        "id",
        "kind",
        "machineId",
        "state",
        "createdAt",
        "claimedAt",
        "finishedAt",
        "result",
        "latencyMs",
        "error",
        "code",
    }


def test_jobs_filters_and_failure_fields(client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys) -> None:
    register(sync_redis, keys, "default", "a")
    register(sync_redis, keys, "default", "b")
    for i in range(30):
        add_job(sync_redis, keys, "a", 2000 + i, kind="paths", result=b'{"exists":{}}', finished=2000 + i)
    failed = add_job(
        sync_redis,
        keys,
        "b",
        1500,
        state="failed",
        result=b'{"success":false,"error":"Machine b is offline","code":"machine_offline"}',
        finished=1500,
    )
    running = add_job(sync_redis, keys, "a", 1400, state="running", result=None)
    r = client.get("/api/jobs?state=failed", headers=AUTH).json()
    assert [j["id"] for j in r["jobs"]] == [failed]
    assert r["jobs"][0]["error"] == "Machine b is offline"
    assert r["jobs"][0]["code"] == "machine_offline"
    assert r["jobs"][0]["latencyMs"] == 0
    r = client.get("/api/jobs?kind=spawn", headers=AUTH).json()
    assert [j["id"] for j in r["jobs"]] == [failed, running]
    assert r["jobs"][1]["latencyMs"] is None and r["jobs"][1]["result"] is None
    r = client.get("/api/jobs?machineId=a&kind=paths&limit=25", headers=AUTH).json()
    assert len(r["jobs"]) == 25 and r["nextCursor"]
    r = client.get(f"/api/jobs?machineId=a&kind=paths&limit=25&cursor={r['nextCursor']}", headers=AUTH).json()
    assert len(r["jobs"]) == 5 and r["nextCursor"] is None
    assert client.get("/api/jobs?machineId=b&state=running", headers=AUTH).json() == {"jobs": [], "nextCursor": None}


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=201", "limit=x", "state=done", "kind=nope", "cursor=!!", f"cursor={'bm9jb2xvbg'}", "machineId="],
)
def test_jobs_bad_params_are_400(client: TestClient, query: str) -> None:
    r = client.get(f"/api/jobs?{query}", headers=AUTH)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "Invalid query"
    assert r.json()["detail"]


def test_jobs_machine_of_another_namespace_is_403_unknown_404(
    client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys
) -> None:
    register(sync_redis, keys, "team", "theirs")
    assert client.get("/api/jobs?machineId=theirs", headers=AUTH).status_code == 403
    assert client.get("/api/jobs?machineId=nobody", headers=AUTH).json() == {"error": "Machine not found"}
    assert client.get("/api/jobs?machineId=theirs", headers=TEAM).status_code == 200
    assert client.get("/api/jobs").status_code == 401


def test_cursor_round_trip() -> None:
    assert decode_cursor(encode_cursor(1764369345123, "m.abc")) == (1764369345123, "m.abc")


async def test_recent_merges_like_a_full_sort(keys: Keys) -> None:
    redis = fakeredis.FakeAsyncRedis()
    history = JobHistory(redis, keys)
    rng = random.Random(7)
    machines = ["m1", "m2", "m3"]
    everything = []
    for m in machines:
        for _ in range(rng.randrange(0, 40)):
            jid, score = job_id(m), rng.randrange(100, 130)  # many ties
            state = rng.choice(["succeeded", "failed"])
            await redis.zadd(keys.history("default", m), {jid: score})
            await redis.hset(keys.job("default", m, jid), mapping={"kind": "paths", "state": state})
            everything.append((score, jid, state))
    everything.sort(reverse=True)
    for limit, batch, only in [(5, 6, None), (7, 2, "failed"), (100, 3, None), (1, 1, "succeeded")]:
        want = [j for s, j, st in everything if only is None or st == only]
        got: list[str] = []
        before = None
        while True:
            items, more = await history.recent(
                "default",
                machines,
                before=before,
                limit=limit,
                batch=batch,
                match=lambda r, only=only: only is None or r["state"] == only.encode(),  # type: ignore[misc]
            )
            got.extend(i.job_id for i in items)
            if not more:
                break
            before = items[-1].position
        assert got == want


# /metrics


def test_metrics_names_and_fleet_gauges(client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys) -> None:
    register(sync_redis, keys, "default", "on", online=True)
    register(sync_redis, keys, "default", "off")
    register(sync_redis, keys, "team", "t1", online=True)
    sync_redis.lpush(keys.mailbox("default", "on"), b"x")
    sync_redis.sadd(keys.running("default", "off"), "j1", "j2")
    sync_redis.hset(keys.stats("default", "on"), mapping={"succeeded": 3, "failed": 1})
    sync_redis.hset(keys.stats("default", "off"), mapping={"succeeded": 2})
    client.get("/api/machines", headers=AUTH)
    client.get("/api/jobs/nope.x", headers=AUTH)
    client.get("/livez")
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    for line in [
        'machine_hub_http_requests_total{method="GET",route="/api/machines",status="200"} 1.0',
        'machine_hub_http_requests_total{method="GET",route="/api/jobs/{job_id}",status="404"} 1.0',
        'machine_hub_machines_online{namespace="default"} 1.0',
        'machine_hub_machines_online{namespace="team"} 1.0',
        'machine_hub_machines_registered{namespace="default"} 2.0',
        'machine_hub_jobs{namespace="default",state="queued"} 1.0',
        'machine_hub_jobs{namespace="default",state="running"} 2.0',
        'machine_hub_jobs_finished_total{namespace="default",state="succeeded"} 5.0',
        'machine_hub_jobs_finished_total{namespace="default",state="failed"} 1.0',
        "machine_hub_fleet_up 1.0",
        "machine_hub_event_streams_open 0.0",
    ]:
        assert line in text.splitlines(), line
    assert "# TYPE machine_hub_job_roundtrip_seconds histogram" in text
    assert "# TYPE machine_hub_redis_errors_total counter" in text
    assert 'route="/livez"' not in text and 'route="/metrics"' not in text
    assert "nope.x" not in text  # route templates, never ids


def test_metrics_token(settings: Settings, fake_server: fakeredis.FakeServer) -> None:
    app = create_app(
        Settings(**{**settings_dict(settings), "metrics_token": "scrape-me"}),
        redis=fakeredis.FakeAsyncRedis(server=fake_server),
        blocking=fakeredis.FakeAsyncRedis(server=fake_server),
    )
    with TestClient(app) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Bearer nope"}).json() == {"error": "Invalid token"}
        assert c.get("/metrics", headers=AUTH).status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Bearer scrape-me"}).status_code == 200


def settings_dict(settings: Settings) -> dict[str, object]:
    import msgspec

    return msgspec.structs.asdict(settings)


def broken_app(settings: Settings) -> TestClient:
    import redis.asyncio

    dead = redis.asyncio.Redis(port=1, socket_connect_timeout=0.2)
    return TestClient(create_app(settings, redis=dead, blocking=dead))


def test_redis_down_metrics_and_readyz(settings: Settings) -> None:
    with broken_app(settings) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["ready"] is False
        assert c.get("/livez").status_code == 200
        assert c.get("/api/machines", headers=AUTH).status_code == 503
        text = c.get("/metrics").text
        assert "machine_hub_fleet_up 0.0" in text
        assert 'machine_hub_redis_errors_total{source="request"} 1.0' in text
        assert 'machine_hub_redis_errors_total{source="readyz"} 1.0' in text


# health


def test_livez_and_readyz(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").json() == {"ready": True}
    monkeypatch.setattr(AppStatus, "should_exit", True)
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["draining"] is True
    assert client.get("/api/events", headers=AUTH).status_code == 503


# /api/events (streaming itself is tested end to end)


@pytest.mark.parametrize(
    ("url", "headers", "status"),
    [
        ("/api/events", {}, 401),
        ("/api/events?token=", {}, 401),
        ("/api/events?token=wrong", {}, 401),
        ("/api/events", {"Authorization": "Bearer wrong"}, 401),
        ("/api/events", {**AUTH, "Last-Event-ID": "garbage"}, 400),
        (f"/api/events?token={SECRET}&lastEventId=1-2-3", {}, 400),
    ],
)
def test_events_refusals(client: TestClient, url: str, headers: dict[str, str], status: int) -> None:
    assert client.get(url, headers=headers).status_code == status


def test_events_over_the_bound_is_503(settings: Settings, fake_server: fakeredis.FakeServer) -> None:
    app = create_app(
        Settings(**{**settings_dict(settings), "max_event_streams": 0}),
        redis=fakeredis.FakeAsyncRedis(server=fake_server),
        blocking=fakeredis.FakeAsyncRedis(server=fake_server),
    )
    with TestClient(app) as c:
        r = c.get("/api/events", headers=AUTH)
        assert r.status_code == 503
        assert r.json()["error"] == "Too many event streams"


# /openapi.json and /docs


def test_openapi_covers_every_route(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    app_paths = {
        re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", r.path)  # type: ignore[attr-defined]
        for r in client.app.routes  # type: ignore[attr-defined]
        if not r.path.startswith("/dashboard") and not r.path.startswith("/static")  # type: ignore[attr-defined]
    }
    assert app_paths <= set(spec["paths"]), app_paths - set(spec["paths"])
    spawn = spec["paths"]["/api/machines/{machine_id}/spawn"]["post"]
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in spawn["parameters"])
    assert {"200", "400", "401", "403", "404", "413", "422", "503"} <= set(spawn["responses"])
    assert {"500"} <= set(spec["paths"]["/api/machines/{machine_id}/paths/exists"]["post"]["responses"])
    schemas = spec["components"]["schemas"]
    assert schemas["SpawnRequest"]["required"] == ["directory"]
    assert set(schemas["PathsRequest"]["properties"]["paths"]) >= {"minItems", "maxItems"}
    for name in ("JobPage", "JobSummary", "MachineStatus", "MachineEvent", "JobEvent", "Error"):
        assert name in schemas


def test_docs_page_is_self_contained(client: TestClient) -> None:
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "openapi.json" in r.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", r.text)
    assert "http://" not in r.text and "https://" not in r.text
