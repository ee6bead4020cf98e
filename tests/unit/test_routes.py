"""The HTTP contract's error answers (docs/api.md), on fakeredis; the happy paths run end to end."""

from __future__ import annotations

import asyncio
import json
import re

import fakeredis
import msgspec
import pytest
from redis import exceptions as redis_errors
from redis.asyncio.sentinel import MasterNotFoundError
from starlette.testclient import TestClient

from api.app import create_app
from api.errors import redis_error
from api.inbox import Inbox
from core.keys import Keys
from core.lua import Scripts
from core.queue import JobQueue
from core.settings import Settings
from machine_hub.redis_server import free_port
from tests.machines import FLEET_DEFAULTS, add_sync
from tests.unit.conftest import SECRET
from tests.waiting import eventually

AUTH = {"Authorization": f"Bearer {SECRET}"}


def register(redis: fakeredis.FakeRedis, keys: Keys, ns: str, machine_id: str, *, online: bool = False) -> None:
    add_sync(redis, keys, ns, machine_id, online=online)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer   "])
def test_missing_token_is_401(client: TestClient, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    r = client.get("/api/machines", headers=headers)
    assert r.status_code == 401
    assert r.json() == {"error": "Missing authorization token"}


@pytest.mark.parametrize(
    "header", ["Bearer nope", f"Bearer {SECRET}x", f"Basic {SECRET}", f"Bearer {SECRET}:", f"Bearer {SECRET}:bad ns"]
)
def test_wrong_token_is_401_invalid(client: TestClient, header: str) -> None:
    r = client.get("/api/machines", headers={"Authorization": header})
    assert r.status_code == 401
    assert r.json() == {"error": "Invalid token"}


def test_list_shows_only_online_machines_of_the_namespace(
    client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys
) -> None:
    register(sync_redis, keys, "default", "b-online", online=True)
    register(sync_redis, keys, "default", "a-online", online=True)
    register(sync_redis, keys, "default", "offline")
    register(sync_redis, keys, "team", "theirs", online=True)
    r = client.get("/api/machines", headers=AUTH)
    assert r.status_code == 200
    machines = r.json()["machines"]
    assert [m["id"] for m in machines] == ["a-online", "b-online"]
    seconds, _ = sync_redis.time()
    assert abs(machines[0].pop("lastSeen") - seconds * 1000) < 5_000
    assert machines[0] == {
        "id": "a-online",
        "namespace": "default",
        "metadata": {"hostname": "h", "platform": "linux", "version": "1", "launcher": "pty"},
        **FLEET_DEFAULTS,
    }
    r = client.get("/api/machines", headers={"Authorization": f"Bearer {SECRET}:team"})
    assert [m["id"] for m in r.json()["machines"]] == ["theirs"]


@pytest.mark.parametrize("route", ["spawn", "paths/exists"])
def test_unknown_machine_is_404_before_body_checks(client: TestClient, route: str) -> None:
    r = client.post(f"/api/machines/nope/{route}", headers=AUTH, content=b"not json")
    assert r.status_code == 404
    assert r.json() == {"error": "Machine not found"}


@pytest.mark.parametrize("machine_id", ["{x}", "a:b", "-lead", "x" * 200])
def test_malformed_machine_id_is_404(client: TestClient, machine_id: str) -> None:
    r = client.post(f"/api/machines/{machine_id}/spawn", headers=AUTH, json={"directory": "/x"})
    assert r.status_code == 404


@pytest.mark.parametrize("route", ["spawn", "paths/exists"])
def test_foreign_machine_is_403(client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys, route: str) -> None:
    register(sync_redis, keys, "team", "theirs", online=True)
    r = client.post(f"/api/machines/theirs/{route}", headers=AUTH, content=b"{}")
    assert r.status_code == 403
    assert r.json() == {"error": "Access denied"}


SPAWN_BAD_BODIES = [
    (b"not json", "not valid JSON"),
    (b"[]", "Expected `object`, got `array`"),
    (b"{}", "missing required field `directory`"),
    (b'{"directory": ""}', "directory must not be empty"),
    (b'{"directory": "   "}', "directory must not be empty"),
    (b'{"directory": 5}', "Expected `str`, got `int` - at `$.directory`"),
    (b'{"directory": "/x", "agent": "foo"}', "$.agent"),
    (b'{"directory": "/x", "agent": null}', "$.agent"),
    (b'{"directory": "/x", "yolo": "true"}', "Expected `bool`, got `str` - at `$.yolo`"),
    (b'{"directory": "/x", "model": 3}', "$.model"),
    (b'{"directory": "/x", "model": ""}', "model must not be empty or start with '-' - at `$.model`"),
    (b'{"directory": "/x", "model": " \\t"}', "model must not be empty"),
    (b'{"directory": "/x", "model": "--help"}', "model must not be empty or start with '-'"),
    # The agent strips the model before it passes it, so leading blanks do not hide the '-'.
    (b'{"directory": "/x", "model": " -x"}', "model must not be empty or start with '-'"),
    (b'{"directory": "/x", "sessionType": "tree"}', "$.sessionType"),
    (b'{"directory": "/x", "sessionType": "worktree"}', "worktreeName is required"),
    (b'{"directory": "/x", "sessionType": "worktree", "worktreeName": " "}', "worktreeName is required"),
    (b'{"directory": "/x", "sessionType": "worktree", "worktreeName": "!!!"}', "no usable branch name"),
    (b'{"directory": "/x", "prompt": "' + b"p" * (100 * 1024 + 1) + b'"}', "prompt is longer than 102400 bytes"),
    (b'{"directory": "/x", "prompt": 7}', "$.prompt"),
    (b'{"directory": "/x", "reuseWorktree": "yes"}', "$.reuseWorktree"),
]


@pytest.mark.parametrize(("body", "detail"), SPAWN_BAD_BODIES)
def test_spawn_bad_body_is_400_with_detail(
    client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys, body: bytes, detail: str
) -> None:
    register(sync_redis, keys, "default", "m1", online=True)
    r = client.post("/api/machines/m1/spawn", headers=AUTH, content=body)
    assert r.status_code == 400
    assert r.json()["error"] == "Invalid body"
    assert detail in r.json()["detail"]
    assert sync_redis.llen(keys.mailbox("default", "m1")) == 0


# What str.strip() removes, and a few characters it keeps.
BLANKS = [c for c in map(chr, range(0x3001)) if not c.strip()]
MODELS = ["opus", "o", "a-b", " opus ", "\u3000opus", "-", "--model", " -x", "\u2003-x", "", *BLANKS, "\x00"]


@pytest.mark.parametrize("model", MODELS)
def test_the_api_description_says_which_models_the_route_takes(
    client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys, model: str
) -> None:
    register(sync_redis, keys, "default", "m1")  # offline: a model the route takes is answered at once
    pattern = client.get("/openapi.json").json()["components"]["schemas"]["SpawnRequest"]["properties"]["model"]
    described = re.search(pattern["anyOf"][0]["pattern"], model) is not None
    r = client.post("/api/machines/m1/spawn", headers=AUTH, json={"directory": "/x", "model": model})
    assert (r.status_code == 200) == described, (model, r.text)
    assert r.status_code in (200, 400)


PATHS_BAD_BODIES = [
    (b"{}", "missing required field `paths`"),
    (b'{"paths": "x"}', "Expected `array`, got `str`"),
    (b'{"paths": []}', "length >= 1"),
    (b'{"paths": [1]}', "$.paths[0]"),
    (b'{"paths": ["/a", "  "]}', "at `$.paths[1]`"),
    (b'{"paths": [""]}', "path must not be empty"),
    (b'{"paths": ["' + b"a" * 4097 + b'"]}', "longer than 4096 bytes"),
    (b'{"paths": [' + b",".join([b'"/a"'] * 1001) + b"]}", "length <= 1000"),
]


@pytest.mark.parametrize(("body", "detail"), PATHS_BAD_BODIES)
def test_paths_bad_body_is_400_with_detail(
    client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys, body: bytes, detail: str
) -> None:
    register(sync_redis, keys, "default", "m1", online=True)
    r = client.post("/api/machines/m1/paths/exists", headers=AUTH, content=body)
    assert r.status_code == 400
    assert r.json()["error"] == "Invalid body"
    assert detail in r.json()["detail"]


def test_offline_spawn_answers_at_once_and_queues_nothing(
    client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys
) -> None:
    register(sync_redis, keys, "default", "m1")
    r = client.post("/api/machines/m1/spawn", headers=AUTH, json={"directory": "/x"})
    assert r.status_code == 200
    body = r.json()
    assert body["success"] is False and body["code"] == "machine_offline" and body["jobId"]
    assert sync_redis.llen(keys.mailbox("default", "m1")) == 0


def test_a_full_mailbox_is_429_naming_the_limit_and_queues_nothing(
    settings: Settings, fake_server: fakeredis.FakeServer, sync_redis: fakeredis.FakeRedis, keys: Keys
) -> None:
    register(sync_redis, keys, "default", "m1", online=True)
    mailbox = keys.mailbox("default", "m1")
    sync_redis.lpush(mailbox, b"waiting")  # no agent takes it: the mailbox stays full
    full = msgspec.structs.replace(settings, max_queued_jobs=1)
    app = create_app(
        full, redis=fakeredis.FakeAsyncRedis(server=fake_server), blocking=fakeredis.FakeAsyncRedis(server=fake_server)
    )
    session = "7c0e0000-0000-4000-8000-000000000000"
    asks = [("POST", "spawn", {"directory": "/x"}), ("POST", "paths/exists", {"paths": ["/x"]})]
    asks += [("GET", "sessions", None), ("POST", f"sessions/{session}/stop", None)]
    with TestClient(app) as client:
        for method, route, body in asks:
            r = client.request(method, f"/api/machines/m1/{route}", headers=AUTH, json=body)
            assert r.status_code == 429, (route, r.text)
            assert r.headers["retry-after"] == "1"
            assert r.json() == {
                "error": "Too many requests",
                "detail": "machine m1 has 1 jobs waiting",
                "limit": "max_queued_jobs",
            }
        assert client.get("/api/jobs", headers=AUTH).json()["jobs"] == []
        metrics = client.get("/metrics").text
    assert sync_redis.lrange(mailbox, 0, -1) == [b"waiting"]
    assert 'machine_hub_limit_refusals_total{limit="max_queued_jobs"} 4.0' in metrics


def test_offline_paths_is_500(client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys) -> None:
    register(sync_redis, keys, "default", "m1")
    r = client.post("/api/machines/m1/paths/exists", headers=AUTH, json={"paths": ["/tmp"]})
    assert r.status_code == 500
    assert r.json() == {"error": "Failed to check paths: machine m1 is offline", "code": "machine_offline"}


def test_unclaimed_spawn_is_not_started_and_can_never_run(
    client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys
) -> None:
    register(sync_redis, keys, "default", "m1", online=True)
    r = client.post("/api/machines/m1/spawn", headers=AUTH, json={"directory": "/x"})
    body = r.json()
    assert body.get("code") == "not_started", body
    record = json.loads(sync_redis.get(keys.job("default", "m1", body["jobId"])))
    assert record["state"] == "expired"


def test_body_over_the_limit_is_413(client: TestClient, settings) -> None:
    r = client.post("/api/machines/m1/paths/exists", headers=AUTH, content=b"x" * (settings.max_body_bytes + 1))
    assert r.status_code == 413
    assert r.json()["error"] == "Request body too large"


def test_bad_idempotency_key_is_400(client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys) -> None:
    register(sync_redis, keys, "default", "m1", online=True)
    headers = {**AUTH, "Idempotency-Key": "x" * 300}
    r = client.post("/api/machines/m1/spawn", headers=headers, json={"directory": "/x"})
    assert r.status_code == 400
    assert r.json()["error"] == "Invalid header"


def test_same_idempotency_key_other_body_is_422(
    client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys
) -> None:
    register(sync_redis, keys, "default", "m1", online=True)
    headers = {**AUTH, "Idempotency-Key": "k1"}
    first = client.post("/api/machines/m1/spawn", headers=headers, json={"directory": "/x"}).json()
    assert first["code"] == "not_started"
    again = client.post("/api/machines/m1/spawn", headers=headers, json={"directory": "/x"}).json()
    assert again == first
    r = client.post("/api/machines/m1/spawn", headers=headers, json={"directory": "/y"})
    assert r.status_code == 422
    assert sync_redis.llen(keys.mailbox("default", "m1")) <= 1


def test_a_redis_error_that_is_not_an_outage_is_a_logged_500(
    client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys
) -> None:
    sync_redis.set(keys.machines("default"), "not a sorted set")
    r = client.get("/api/machines", headers=AUTH)
    assert r.status_code == 500 and r.json() == {"error": "Internal error"}


@pytest.mark.parametrize(
    "exc",
    [
        redis_errors.ClusterDownError("The cluster is down"),
        redis_errors.TryAgainError("Multiple keys request during rehashing of slot"),
        redis_errors.MasterDownError("Link with MASTER is down"),
        redis_errors.ReadOnlyError("You can't write against a read only replica."),
        MasterNotFoundError("No master found for 'mymaster'"),
    ],
)
def test_a_failover_in_progress_is_a_503_not_a_500(exc: redis_errors.RedisError) -> None:
    response = asyncio.run(redis_error(None, exc))  # type: ignore[arg-type]  # the request is unused
    assert response.status_code == 503
    assert json.loads(bytes(response.body)) == {"error": "Hub not connected"}


class LostSlotRedis(fakeredis.FakeAsyncRedis):
    """A cluster client's answer while a node is down and its slots are not covered."""

    async def zrangebylex(self, *args: object, **kwargs: object) -> object:
        raise redis_errors.SlotNotCoveredError('Slot "42" is not covered by the cluster.')


def test_a_slot_not_covered_is_a_503_though_redis_py_does_not_call_it_a_redis_error(settings: Settings) -> None:
    server = fakeredis.FakeServer()
    app = create_app(settings, redis=LostSlotRedis(server=server), blocking=fakeredis.FakeAsyncRedis(server=server))
    with TestClient(app) as client:
        r = client.get("/api/machines", headers=AUTH)
    assert (r.status_code, r.json()) == (503, {"error": "Hub not connected"})


def test_a_cluster_no_node_answers_is_a_503(settings: Settings) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    cluster = msgspec.structs.replace(settings, redis_url=dead, redis_cluster=True, worker_redis_url=dead)
    with TestClient(create_app(cluster)) as client:
        r = client.get("/api/machines", headers=AUTH)
    assert (r.status_code, r.json()) == (503, {"error": "Hub not connected"})


async def test_the_reply_reader_outlives_a_cluster_no_node_answers(keys: Keys) -> None:
    class Unreachable:
        calls = 0

        async def blmpop(self, *args: object, **kwargs: object) -> object:
            self.calls += 1
            raise redis_errors.RedisClusterException("Redis Cluster cannot be connected.")

    redis = fakeredis.FakeAsyncRedis()
    blocking = Unreachable()
    queue = JobQueue(redis, keys, Scripts(redis, can_load=True))
    inbox = Inbox(queue, blocking, "0" * 16, block_s=0.1, reconnect_max_s=0.01, outage_grace_s=1.0)  # type: ignore[arg-type]
    reader = asyncio.create_task(inbox.run())
    await eventually(lambda: blocking.calls >= 3 or reader.done(), "the reader to try three times")
    assert not reader.done(), "the reader died: this hub would never hear a reply again"
    assert inbox.outages.remaining_s() > 0, "what waits for replies knows Redis failed"
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
