"""Monitoring routes on fakeredis: machine listing with offline ones, job listing, metrics, health, docs."""

from __future__ import annotations

import asyncio
import random
import re
import uuid

import fakeredis
import msgspec
import pytest
from sse_starlette.sse import AppStatus
from starlette.testclient import TestClient

from api.app import create_app
from api.events import Streams
from api.history import decode_cursor, encode_cursor
from core.errors import HubStreamsFull, TooManyStreams
from core.history import JobHistory
from core.keys import Keys
from core.schemas import JobKind, JobRecord, JobState
from core.settings import Settings
from tests.machines import FLEET_DEFAULTS
from tests.unit.conftest import SECRET
from tests.unit.test_routes import AUTH, register
from tests.waiting import eventually

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
    """A recorded job as the enqueue script leaves it: in the namespace's index, its record a JSON text."""
    jid = jid or job_id(machine_id)
    redis.zadd(keys.jobs(ns), {jid: created})
    if stored:
        record = JobRecord(
            kind=JobKind(kind),
            machine_id=machine_id,
            state=JobState(state),
            created_ms=created,
            finished_ms=finished,
            claimed_ms=None if finished is None else created + 1,
            result=(result or b"").decode(),
        )
        redis.set(keys.job(ns, machine_id, jid), msgspec.json.encode(record))
    return jid


# GET /api/machines?include=offline


def test_include_offline_lists_every_machine_with_counts(
    client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys
) -> None:
    register(sync_redis, keys, "default", "on", online=True)
    register(sync_redis, keys, "default", "off")
    register(sync_redis, keys, "default", "never")
    register(sync_redis, keys, "team", "theirs", online=True)
    sync_redis.hset(keys.reg("default", "off"), "lastSeenMs", 1690000000000)
    sync_redis.delete(keys.info("default", "never"))
    sync_redis.lpush(keys.mailbox("default", "on"), b"a", b"b")
    r = client.get("/api/machines?include=offline", headers=AUTH)
    assert r.status_code == 200
    machines = {m["id"]: m for m in r.json()["machines"]}
    assert list(machines) == ["never", "off", "on"]
    meta = {"hostname": "h", "platform": "linux", "version": "1", "launcher": "pty"}
    assert isinstance(machines["on"].pop("lastSeen"), int)
    assert machines["on"] == {
        "id": "on",
        "namespace": "default",
        "metadata": meta,
        "online": True,
        "queueDepth": 2,
        "inFlight": 0,
        **FLEET_DEFAULTS,
    }
    assert machines["off"]["online"] is False
    assert (machines["off"]["sessions"], machines["off"]["health"]) == (None, None), "nothing live while offline"
    assert machines["off"]["lastSeen"] == 1690000000000
    assert machines["off"]["metadata"] == meta
    assert machines["never"]["lastSeen"] is None and machines["never"]["metadata"] is None
    assert [m["id"] for m in client.get("/api/machines?include=offline", headers=TEAM).json()["machines"]] == ["theirs"]


def test_without_include_the_listing_is_hapis_plus_the_fleet_fields(
    client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys
) -> None:
    register(sync_redis, keys, "default", "on", online=True)
    register(sync_redis, keys, "default", "off")
    body = client.get("/api/machines", headers=AUTH).content
    assert re.fullmatch(
        rb'\{"machines":\[\{"id":"on","namespace":"default","metadata":\{"hostname":"h","platform":"linux",'
        rb'"version":"1","launcher":"pty"\},"lastSeen":\d{13},"displayName":null,"agents":null,"labels":\{\},'
        rb'"maxSessions":null,"sessions":0,"health":null,"drained":false\}\]\}',
        body,
    ), body


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
    expected.sort(key=lambda j: (int(sync_redis.zscore(keys.jobs("default"), j) or 0), j))
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
        "waitingUntil",
        "latencyMs",
        "error",
        "code",
    }


def test_jobs_filters_and_failure_fields(client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys) -> None:
    register(sync_redis, keys, "default", "a")
    register(sync_redis, keys, "default", "b")
    for i in range(30):
        add_job(sync_redis, keys, "a", 2000 + i, kind="stop", result=b'{"stopped":true}', finished=2000 + i)
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
    r = client.get("/api/jobs?machineId=a&kind=stop&limit=25", headers=AUTH).json()
    assert len(r["jobs"]) == 25 and r["nextCursor"]
    r = client.get(f"/api/jobs?machineId=a&kind=stop&limit=25&cursor={r['nextCursor']}", headers=AUTH).json()
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


async def test_recent_walks_the_index_like_a_full_sort(keys: Keys) -> None:
    server = fakeredis.FakeServer()
    redis, sync = fakeredis.FakeAsyncRedis(server=server), fakeredis.FakeRedis(server=server)
    history = JobHistory(redis, keys)
    rng = random.Random(7)
    everything = []
    for m in ["m1", "m2", "m3"]:
        for _ in range(rng.randrange(0, 40)):
            score = rng.randrange(100, 130)  # many ties
            state = rng.choice(["succeeded", "failed"])
            everything.append((score, add_job(sync, keys, m, score, state=state), state, m))
    everything.sort(reverse=True)
    for limit, only, machine in [(5, None, None), (7, "failed", None), (100, None, "m2"), (1, "succeeded", "m3")]:
        want = [j for s, j, st, m in everything if only in (None, st) and machine in (None, m)]
        got: list[str] = []
        before = None
        while True:
            page = await history.recent(
                "default",
                before=before,
                limit=limit,
                machine_id=machine,
                match=lambda r, only=only: only in (None, r.state),  # type: ignore[misc]
            )
            assert len(page.items) <= limit
            got.extend(i.job_id for i in page.items)
            if page.next_position is None:
                break
            before = page.next_position
        assert got == want


# /metrics


def fleet_fixture(sync_redis: fakeredis.FakeRedis, keys: Keys) -> None:
    register(sync_redis, keys, "default", "on", online=True)
    register(sync_redis, keys, "default", "off")
    register(sync_redis, keys, "team", "t1", online=True)
    # What the worker counts as it marks machines online, and the hubs as jobs end.
    sync_redis.hset(
        keys.stats(),
        mapping={
            "default machines_online": 1,
            "team machines_online": 1,
            "default jobs_finished:succeeded": 5,
            "default jobs_finished:failed": 1,
        },
    )


def test_metrics_names_and_fleet_gauges(client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys) -> None:
    """Without a metrics token /metrics is open, so the fleet is summed: no namespace is named."""
    fleet_fixture(sync_redis, keys)
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
        "machine_hub_machines_online 2.0",
        "machine_hub_machines_registered 3.0",
        'machine_hub_jobs_finished_total{state="succeeded"} 5.0',
        'machine_hub_jobs_finished_total{state="failed"} 1.0',
        "machine_hub_fleet_up 1.0",
        "machine_hub_event_streams_open 0.0",
    ]:
        assert line in text.splitlines(), line
    assert "# TYPE machine_hub_job_roundtrip_seconds histogram" in text
    assert "# TYPE machine_hub_redis_errors_total counter" in text
    assert "# TYPE machine_hub_limit_refusals_total counter" in text
    assert 'route="/livez"' not in text and 'route="/metrics"' not in text
    assert "nope.x" not in text  # route templates, never ids
    assert "namespace" not in text and "default" not in text and "team" not in text


def test_metrics_by_namespace_with_the_metrics_token(
    settings: Settings, fake_server: fakeredis.FakeServer, sync_redis: fakeredis.FakeRedis, keys: Keys
) -> None:
    fleet_fixture(sync_redis, keys)
    app = create_app(
        Settings(**{**settings_dict(settings), "metrics_token": "scrape-me"}),
        redis=fakeredis.FakeAsyncRedis(server=fake_server),
        blocking=fakeredis.FakeAsyncRedis(server=fake_server),
    )
    with TestClient(app) as c:
        text = c.get("/metrics", headers={"Authorization": "Bearer scrape-me"}).text
    for line in [
        'machine_hub_machines_online{namespace="default"} 1.0',
        'machine_hub_machines_online{namespace="team"} 1.0',
        'machine_hub_machines_registered{namespace="default"} 2.0',
        'machine_hub_jobs_finished_total{namespace="default",state="succeeded"} 5.0',
        'machine_hub_jobs_finished_total{namespace="default",state="failed"} 1.0',
        "machine_hub_fleet_up 1.0",
    ]:
        assert line in text.splitlines(), line


async def test_concurrent_scrapes_share_one_fleet_read(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flood of scrapes waits on one Redis read (no lock held by one slow scrape against the rest)."""
    from api import metrics as metrics_module
    from api.hub import Hub

    reads = 0
    release = asyncio.Event()

    async def slow_read(hub: Hub) -> dict[str, dict[str, int]]:
        nonlocal reads
        reads += 1
        await release.wait()
        return {"default": {"machines_registered": 1, "machines_online": 1}}

    redis = fakeredis.FakeAsyncRedis()
    hub = Hub(settings, redis, redis)
    metrics = metrics_module.Metrics()
    monkeypatch.setattr(metrics_module, "read_fleet", slow_read)
    try:
        scrapes = [asyncio.ensure_future(metrics.exposition(hub, by_namespace=False)) for _ in range(50)]
        # The first scrape reads the fleet; the others, started in the same turn, wait for that read.
        await eventually(lambda: reads == 1, "the first scrape reads the fleet")
        scrapes[0].cancel()  # one scraper hangs up: the read the others wait for goes on
        release.set()
        bodies = await asyncio.gather(*scrapes[1:])
        assert reads == 1
        assert all(b"machine_hub_machines_online 1.0" in body for body in bodies)
        await metrics.exposition(hub, by_namespace=False)
        assert reads == 1  # cached for FLEET_CACHE_S
    finally:
        await redis.aclose()


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
        ("/api/events?token=", {}, 400),
        (f"/api/events?token={SECRET}", {}, 400),
        (f"/api/events?token={SECRET}", AUTH, 400),
        ("/api/events", {"Authorization": "Bearer wrong"}, 401),
        ("/api/events", {**AUTH, "Last-Event-ID": "garbage"}, 400),
        ("/api/events?lastEventId=1-2-3", AUTH, 400),
    ],
)
def test_events_refusals(client: TestClient, url: str, headers: dict[str, str], status: int) -> None:
    assert client.get(url, headers=headers).status_code == status


def test_events_token_in_the_url_is_refused_with_a_reason(client: TestClient) -> None:
    r = client.get(f"/api/events?token={SECRET}")
    assert r.json() == {
        "error": "Invalid query",
        "detail": "tokens are not accepted in URLs: send Authorization: Bearer <token> - at `token`",
    }


def test_stream_slots_per_token_namespace_and_hub(settings: Settings) -> None:
    streams = Streams(
        Settings(
            **{
                **settings_dict(settings),
                "max_event_streams": 4,
                "max_event_streams_per_namespace": 3,
                "max_event_streams_per_token": 2,
            }
        ),
        redis=fakeredis.FakeAsyncRedis(),
    )
    streams.admit("a", "t1")
    streams.admit("a", "t1")
    with pytest.raises(TooManyStreams) as token_full:
        streams.admit("a", "t1")
    assert token_full.value.limit == "max_event_streams_per_token" and token_full.value.retry_after_s == 5
    streams.admit("a", "t2")
    with pytest.raises(TooManyStreams) as ns_full:
        streams.admit("a", "t3")
    assert ns_full.value.limit == "max_event_streams_per_namespace"
    streams.admit("b", "t4")  # another tenant is not blocked by a's streams
    with pytest.raises(HubStreamsFull) as hub_full:
        streams.admit("c", "t5")
    assert hub_full.value.limit == "max_event_streams"
    streams.release("a", "t1")
    streams.admit("a", "t1")
    for _ in range(2):
        streams.release("a", "t1")
    streams.release("a", "t2")
    streams.release("b", "t4")
    assert streams.open == 0 and not streams.by_namespace and not streams.by_token


def test_zero_turns_stream_limits_off(settings: Settings) -> None:
    values = {"max_event_streams": 0, "max_event_streams_per_namespace": 0, "max_event_streams_per_token": 0}
    streams = Streams(Settings(**{**settings_dict(settings), **values}), redis=fakeredis.FakeAsyncRedis())
    for _ in range(1000):
        streams.admit("a", "t")
    assert streams.open == 1000


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
