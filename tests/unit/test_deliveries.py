"""Delivery attempts (core.deliveries): the request on the wire, the log, and when to try again.

The receiver is httpx2's MockTransport: the Sender's one boundary, faked; Redis is fakeredis.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable

import fakeredis
import httpx2
import msgspec
import pytest

from core import stats
from core.deliveries import Delivery, Sender, jittered, max_attempts, payload, retry_delay_s
from core.keys import Keys
from core.lua import Scripts
from core.settings import Settings
from core.signatures import verify
from core.webhooks import WebhookRecord, WebhookStore

Handler = Callable[[httpx2.Request], httpx2.Response]
URL = "https://93.184.216.34:8443/hooks/mh"  # a public literal: no name to look up in a unit test


def test_delays_double_up_to_the_cap() -> None:
    settings = Settings()
    assert [retry_delay_s(settings, n) for n in range(1, 12)] == [
        10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600,
    ]  # fmt: skip
    assert retry_delay_s(settings, 10_000) == 3600  # no overflow however many attempts


def test_a_pause_is_jittered_between_half_and_all_of_it() -> None:
    pauses = [jittered(60.0) for _ in range(200)]
    assert all(30.0 <= p <= 60.0 for p in pauses)
    assert max(pauses) - min(pauses) > 10  # spread out, not one value


def test_the_window_bounds_the_number_of_attempts() -> None:
    # Counted with the shortest pauses jitter allows (half of each): 9 doubling ones (2555 s), then
    # 46 half hours fit in 24 h: 55 retries after the first attempt at the most.
    assert max_attempts(Settings()) == 56
    assert max_attempts(Settings(webhook_retry_base_s=5, webhook_retry_window_s=4)) == 2
    assert max_attempts(Settings(webhook_retry_base_s=1, webhook_retry_max_s=1, webhook_retry_window_s=3)) == 7


class Harness:
    def __init__(self, handler: Handler, **overrides: object) -> None:
        self.settings = Settings(key_prefix=f"t-{uuid.uuid4().hex[:8]}", **overrides)  # type: ignore[arg-type]
        self.server = fakeredis.FakeServer()
        self.redis = fakeredis.FakeAsyncRedis(server=self.server)
        self.keys = Keys(self.settings.key_prefix)
        self.requests: list[httpx2.Request] = []

        def record(request: httpx2.Request) -> httpx2.Response:
            self.requests.append(request)
            return handler(request)

        self.http = httpx2.AsyncClient(transport=httpx2.MockTransport(record))
        self.sender = Sender(self.redis, self.keys, self.settings, self.http)
        self.store = WebhookStore(self.redis, self.keys, Scripts(self.redis, can_load=True))

    async def webhook(self, url: str = URL) -> WebhookRecord:
        return await self.store.create("team", url, ["job.failed"], limit=20)

    def delivery(self, hook: WebhookRecord, age_s: float = 0.0) -> Delivery:
        at_ms = int((time.time() - age_s) * 1000)
        data = '{"type":"job","jobId":"m.1","machineId":"m","kind":"spawn","state":"failed","code":"spawn_failed"}'
        return Delivery(namespace="team", webhook_id=hook.id, stream_id=f"{at_ms}-0", event="job.failed", data=data)

    def counter(self, outcome: str) -> int:
        raw = fakeredis.FakeRedis(server=self.server).hget(self.keys.stats(), f"team {stats.DELIVERIES}:{outcome}")
        return int(raw or 0)


@pytest.fixture
async def harness() -> AsyncIterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(handler: Handler, **overrides: object) -> Harness:
        made.append(Harness(handler, **overrides))
        return made[-1]

    yield make
    for h in made:
        await h.http.aclose()
        await h.redis.aclose()


def answer(status: int) -> Handler:
    return lambda request: httpx2.Response(status)


async def test_a_2xx_delivers_a_signed_body_to_the_checked_address(harness: Callable[..., Harness]) -> None:
    h = harness(answer(204))
    hook = await h.webhook()
    delivery = h.delivery(hook)
    assert await h.sender.attempt(delivery, attempt=1) is None
    [request] = h.requests
    assert request.url.host == "93.184.216.34" and request.url.port == 8443 and request.url.path == "/hooks/mh"
    assert request.headers["host"] == "93.184.216.34:8443"
    assert request.extensions["sni_hostname"] == "93.184.216.34"
    assert request.content == payload(delivery)
    assert request.headers["x-machine-hub-delivery"] == delivery.id == f"{hook.id}.{delivery.stream_id}"
    assert request.headers["x-machine-hub-event"] == "job.failed"
    ts, signature = request.headers["x-machine-hub-timestamp"], request.headers["x-machine-hub-signature"]
    assert verify(hook.secret, ts, signature, request.content, now_s=time.time())
    body = msgspec.json.decode(request.content)
    assert body["id"] == delivery.id and body["namespace"] == "team" and body["data"]["code"] == "spawn_failed"
    [entry] = await h.store.deliveries("team", hook.id) or []
    assert (entry.outcome, entry.status, entry.error, entry.attempt) == ("succeeded", 204, None, 1)
    assert h.counter("succeeded") == 1


async def test_a_failed_attempt_is_tried_again_after_the_backoff(harness: Callable[..., Harness]) -> None:
    h = harness(answer(500), webhook_retry_base_s=2.0)
    hook = await h.webhook()
    first = await h.sender.attempt(h.delivery(hook), attempt=1)
    third = await h.sender.attempt(h.delivery(hook), attempt=3)
    assert first is not None and 1.0 <= first <= 2.0
    assert third is not None and 4.0 <= third <= 8.0
    log = await h.store.deliveries("team", hook.id) or []
    assert [(e.attempt, e.status, e.outcome) for e in log] == [(3, 500, "retrying"), (1, 500, "retrying")]
    assert all(e.next_attempt_at is not None and e.next_attempt_at >= e.at + 1000 for e in log)
    assert h.counter("failed") == 0


async def test_no_attempt_starts_after_the_window(harness: Callable[..., Harness]) -> None:
    h = harness(answer(503), webhook_retry_base_s=60.0, webhook_retry_window_s=3600.0)
    hook = await h.webhook()
    assert await h.sender.attempt(h.delivery(hook, age_s=3590), attempt=7) is None
    [entry] = await h.store.deliveries("team", hook.id) or []
    assert (entry.outcome, entry.status, entry.next_attempt_at) == ("failed", 503, None)
    assert h.counter("failed") == 1


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (httpx2.ConnectError("refused"), "connection_failed"),
        (httpx2.ReadTimeout("slow"), "timeout"),
        (httpx2.RemoteProtocolError("garbage"), "connection_failed"),
    ],
)
async def test_no_answer_is_logged_by_what_went_wrong(
    harness: Callable[..., Harness], error: Exception, code: str
) -> None:
    def fail(request: httpx2.Request) -> httpx2.Response:
        raise error

    h = harness(fail)
    hook = await h.webhook()
    pause = await h.sender.attempt(h.delivery(hook), attempt=1)
    assert pause is not None and 5.0 <= pause <= 10.0
    [entry] = await h.store.deliveries("team", hook.id) or []
    assert (entry.status, entry.error, entry.outcome) == (None, code, "retrying")


@pytest.mark.parametrize(
    ("url", "code"),
    [("http://10.0.0.7/hook", "url_not_allowed"), ("http://2130706433/hook", "address_not_allowed")],
)
async def test_an_address_the_rules_refuse_is_never_connected_to_nor_tried_again(
    harness: Callable[..., Harness], url: str, code: str
) -> None:
    h = harness(answer(200))  # stored while private addresses were allowed, say
    hook = await h.webhook(url)
    assert await h.sender.attempt(h.delivery(hook), attempt=1) is None
    assert h.requests == []
    [entry] = await h.store.deliveries("team", hook.id) or []
    assert (entry.error, entry.outcome) == (code, "failed")


async def test_a_removed_webhook_ends_its_deliveries_without_a_request_or_a_log(
    harness: Callable[..., Harness],
) -> None:
    h = harness(answer(200))
    hook = await h.webhook()
    assert await h.store.remove("team", hook.id)
    assert await h.sender.attempt(h.delivery(hook), attempt=2) is None
    assert h.requests == []
    assert not fakeredis.FakeRedis(server=h.server).exists(h.keys.webhook_deliveries("team", hook.id))


async def test_the_log_keeps_the_newest_hundred_attempts(harness: Callable[..., Harness]) -> None:
    h = harness(answer(500))
    hook = await h.webhook()
    for attempt in range(1, 106):
        await h.sender.attempt(h.delivery(hook), attempt=attempt)
    log = await h.store.deliveries("team", hook.id) or []
    assert len(log) == 100 and log[0].attempt == 105 and log[-1].attempt == 6
