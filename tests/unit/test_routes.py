"""The HTTP contract's error answers (DESIGN §1), on fakeredis; the happy paths run end to end."""

from __future__ import annotations

import fakeredis
import pytest
from starlette.testclient import TestClient

from core.keys import Keys
from tests.unit.conftest import SECRET

AUTH = {"Authorization": f"Bearer {SECRET}"}


def register(redis: fakeredis.FakeRedis, keys: Keys, ns: str, machine_id: str, *, online: bool = False) -> None:
    redis.set(keys.owner(machine_id), ns)
    redis.sadd(keys.machines(ns), machine_id)
    redis.hset(keys.info(ns, machine_id), "metadata", b'{"hostname":"h","platform":"linux","version":"1"}')
    if online:
        redis.hset(
            keys.heartbeat(ns, machine_id),
            mapping={
                "instance": "i",
                "seenMs": 1700000000000,
                "metadata": b'{"hostname":"h","platform":"linux","version":"1"}',
            },
        )
        redis.pexpire(keys.heartbeat(ns, machine_id), 60_000)


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
    assert machines[0] == {
        "id": "a-online",
        "namespace": "default",
        "lastSeen": 1700000000000,
        "metadata": {"hostname": "h", "platform": "linux", "version": "1", "launcher": "pty"},
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
    assert sync_redis.hget(keys.job("default", "m1", body["jobId"]), "state") == b"expired"


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
    sync_redis.set(keys.machines("default"), "not a set")
    r = client.get("/api/machines", headers=AUTH)
    assert r.status_code == 500 and r.json() == {"error": "Internal error"}
