"""The webhook routes (api/webhooks.py) and store (core.webhooks) on fakeredis: namespace-scoped,
precise 400s, a secret shown once, a limit per namespace."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest
from starlette.testclient import TestClient

from core.events import JobEvent, MachineEvent
from core.keys import Keys
from core.webhooks import event_name
from tests.unit.conftest import SECRET

TEAM = {"Authorization": f"Bearer {SECRET}:team"}
OTHER = {"Authorization": f"Bearer {SECRET}:other"}
HOOK = {"url": "https://ci.example.com/hooks/mh", "events": ["job.failed", "machine.offline"]}


def create(client: TestClient, body: Any = HOOK, headers: dict[str, str] = TEAM) -> Any:
    return client.post("/api/webhooks", json=body, headers=headers)


def test_a_new_webhook_shows_its_secret_once(client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys) -> None:
    r = create(client)
    assert r.status_code == 201, r.text
    hook = r.json()
    assert hook["id"].startswith("wh_") and hook["secret"].startswith("whsec_")
    assert (hook["url"], hook["events"]) == (HOOK["url"], HOOK["events"])
    listed = client.get("/api/webhooks", headers=TEAM).json()
    assert listed == {"webhooks": [{k: v for k, v in hook.items() if k != "secret"}]}
    assert hook["secret"] not in client.get("/api/webhooks", headers=TEAM).text
    assert sync_redis.sismember(keys.webhook_namespaces(), "team")
    assert sync_redis.get(keys.webhook_cursor("team")) == f"{hook['createdAt'] - 1}-{2**64 - 1}".encode()


def test_webhooks_belong_to_the_callers_namespace(client: TestClient) -> None:
    hook = create(client).json()
    assert client.get("/api/webhooks", headers=OTHER).json() == {"webhooks": []}
    assert client.get(f"/api/webhooks/{hook['id']}/deliveries", headers=OTHER).status_code == 404
    assert client.delete(f"/api/webhooks/{hook['id']}", headers=OTHER).json() == {"error": "Webhook not found"}
    assert client.get(f"/api/webhooks/{hook['id']}/deliveries", headers=TEAM).json() == {"deliveries": []}


def test_removing_a_webhook_removes_its_log(client: TestClient, sync_redis: fakeredis.FakeRedis, keys: Keys) -> None:
    hook = create(client).json()
    sync_redis.lpush(keys.webhook_deliveries("team", hook["id"]), b"{}")
    assert client.delete(f"/api/webhooks/{hook['id']}", headers=TEAM).status_code == 204
    assert not sync_redis.exists(keys.webhook_deliveries("team", hook["id"]))
    assert client.delete(f"/api/webhooks/{hook['id']}", headers=TEAM).status_code == 404
    assert client.get(f"/api/webhooks/{hook['id']}/deliveries", headers=TEAM).status_code == 404


@pytest.mark.parametrize("webhook_id", ["nope", "wh_0123", "WH_0123456789abcdef", "wh_0123456789abcdef%2Fx"])
def test_a_malformed_id_is_not_found(client: TestClient, webhook_id: str) -> None:
    assert client.delete(f"/api/webhooks/{webhook_id}", headers=TEAM).status_code == 404
    assert client.get(f"/api/webhooks/{webhook_id}/deliveries", headers=TEAM).status_code == 404


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"url": "ftp://x.example/", "events": ["job.failed"]}, "http:// or https:// - at `$.url`"),
        ({"url": "http://169.254.169.254/", "events": ["job.failed"]}, "not a public address - at `$.url`"),
        ({"url": "https://a:b@x.example/", "events": ["job.failed"]}, "credentials (user:password@) - at `$.url`"),
        ({"url": "https://x.example/", "events": ["job.nope"]}, "Invalid enum value 'job.nope' - at `$.events[0]`"),
        ({"url": "https://x.example/", "events": []}, "Expected `array` of length >= 1 - at `$.events`"),
        ({"url": "https://x.example/"}, "Object missing required field `events`"),
        ({"url": 3, "events": ["job.failed"]}, "Expected `str`, got `int` - at `$.url`"),
        ({"url": "https://x.example/" + "a" * 2100, "events": ["job.failed"]}, "length <= 2048 - at `$.url`"),
    ],
)
def test_a_bad_body_is_a_400_naming_the_field(client: TestClient, body: Any, detail: str) -> None:
    r = create(client, body)
    assert r.status_code == 400
    assert r.json()["error"] == "Invalid body" and detail in r.json()["detail"], r.json()


def test_a_body_that_is_not_json_is_a_400(client: TestClient) -> None:
    r = client.post("/api/webhooks", content=b"{", headers=TEAM)
    assert r.json() == {"error": "Invalid body", "detail": "the body is not valid JSON"}


def test_every_route_needs_a_token(client: TestClient) -> None:
    assert create(client, headers={}).json() == {"error": "Missing authorization token"}
    assert client.get("/api/webhooks", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.delete("/api/webhooks/wh_0123456789abcdef").status_code == 401
    assert client.get("/api/webhooks/wh_0123456789abcdef/deliveries").status_code == 401


def test_repeated_events_count_once(client: TestClient) -> None:
    r = create(client, {"url": HOOK["url"], "events": ["job.failed", "job.failed", "job.unknown"]})
    assert r.json()["events"] == ["job.failed", "job.unknown"]


def test_a_namespace_has_at_most_its_limit_of_webhooks(client: TestClient) -> None:
    for _ in range(20):
        assert create(client).status_code == 201
    r = create(client)
    assert r.status_code == 409
    assert r.json()["error"] == "Too many webhooks" and r.json()["limit"] == "max_webhooks_per_namespace"
    assert create(client, headers=OTHER).status_code == 201  # another namespace has its own
    first = client.get("/api/webhooks", headers=TEAM).json()["webhooks"][0]["id"]
    client.delete(f"/api/webhooks/{first}", headers=TEAM)
    assert create(client).status_code == 201


def test_only_final_job_states_and_online_offline_are_webhook_events() -> None:
    def job(state: str) -> JobEvent:
        return JobEvent(job_id="m.1", machine_id="m", kind="spawn", state=state)

    assert [event_name(job(s)) for s in ("queued", "running", "succeeded", "failed", "expired", "unknown")] == [
        None, None, "job.succeeded", "job.failed", "job.expired", "job.unknown",
    ]  # fmt: skip
    assert [event_name(MachineEvent(machine_id="m", state=s)) for s in ("online", "offline", "updated")] == [
        "machine.online",
        "machine.offline",
        None,
    ]
