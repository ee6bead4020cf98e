"""One delivery of one event to one webhook: the signed POST, its outcome, when to try again.

A delivery is made of attempts. Each attempt re-reads the webhook (a removed one ends it),
resolves and checks the receiver's address (core.destinations), POSTs the same body with a fresh
timestamp and signature (core.signatures), and logs what happened. Any 2xx delivers it. No answer,
or any other status, is tried again after `webhook_retry_base_s`, doubling each time up to
`webhook_retry_max_s`, as long as the next attempt starts within `webhook_retry_window_s` of the
event; a URL or address the rules refuse is not tried again. The worker's queue (arq) runs the
attempts: it holds each delivery until its next attempt is due, on any worker, and a delivery's
queue id is its delivery id, so one event is never queued twice for one webhook.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

import httpx2
import msgspec
from redis.asyncio import Redis

from core import stats
from core.destinations import AddressRefused, LookupFailed, UnfitURL, check_url, port_of, resolve
from core.keys import Keys
from core.lua import Scripts
from core.schemas import Message
from core.settings import Settings
from core.signatures import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from core.webhooks import DeliveryAttempt, EventName, Outcome, WebhookStore

log = logging.getLogger(__name__)
USER_AGENT = "machine-hub-webhooks/0.1"
NOT_RETRIED = frozenset({"url_not_allowed", "address_not_allowed"})


class Delivery(Message):
    """What the worker's queue holds for one delivery (the webhook's URL and secret stay in Redis)."""

    namespace: str
    webhook_id: str
    stream_id: str  # the event's id in the namespace stream
    event: EventName
    data: str  # the event's JSON, as GET /api/events sends it

    @property
    def id(self) -> str:
        """The delivery id: the same for every attempt, unique per webhook and event."""
        return f"{self.webhook_id}.{self.stream_id}"

    @property
    def created_ms(self) -> int:
        return int(self.stream_id.partition("-")[0])


class WebhookPayload(Message, omit_defaults=False):
    """The body of every delivery: `id` is the delivery id (the same on every attempt, so a
    receiver can drop repeats), `data` the event as GET /api/events sends it."""

    id: str
    type: EventName
    namespace: str
    created_at: int
    data: msgspec.Raw


_encoder = msgspec.json.Encoder()


def payload(delivery: Delivery) -> bytes:
    """The body, byte for byte the same on every attempt."""
    return _encoder.encode(
        WebhookPayload(
            id=delivery.id,
            type=delivery.event,
            namespace=delivery.namespace,
            created_at=delivery.created_ms,
            data=msgspec.Raw(delivery.data.encode()),
        )
    )


def retry_delay_s(settings: Settings, attempt: int) -> float:
    """The longest pause after failed attempt number `attempt` (1 is the first); `jittered` picks
    the one taken."""
    return float(min(settings.webhook_retry_base_s * 2 ** min(attempt - 1, 60), settings.webhook_retry_max_s))


def jittered(delay_s: float) -> float:
    """Equal jitter, between half the pause and all of it: deliveries that failed together (their
    receiver was down) do not all come back in the same second."""
    return delay_s / 2 + random.uniform(0, delay_s / 2)


def max_attempts(settings: Settings) -> int:
    """The most attempts the window holds, when each takes no time and every pause is the shortest
    jitter allows (the queue's max_tries: it must never end retries the window still allows)."""
    attempts, elapsed = 1, 0.0
    while elapsed + retry_delay_s(settings, attempts) / 2 <= settings.webhook_retry_window_s:
        elapsed += retry_delay_s(settings, attempts) / 2
        attempts += 1
    return attempts


class Sender:
    """Makes delivery attempts with one HTTP client (the worker's, built by `http_client`)."""

    def __init__(self, redis: Redis, keys: Keys, settings: Settings, http: httpx2.AsyncClient) -> None:
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self.http = http
        self.store = WebhookStore(redis, keys, Scripts(redis, can_load=True))

    async def attempt(self, delivery: Delivery, attempt: int) -> float | None:
        """Make attempt number `attempt`: seconds until the next one, or None when there is none
        (delivered, given up, or the webhook is gone)."""
        record = await self.store.get(delivery.namespace, delivery.webhook_id)
        if record is None:
            log.info("delivery %s dropped: its webhook was removed", delivery.id)
            return None
        body = payload(delivery)
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            EVENT_HEADER: delivery.event,
            DELIVERY_HEADER: delivery.id,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(record.secret, timestamp, body),
        }
        at_ms = await self._now_ms()
        started = time.monotonic()
        status, error = await self.post(record.url, body, headers)
        duration_ms = int((time.monotonic() - started) * 1000)
        delay = jittered(retry_delay_s(self.settings, attempt))
        next_ms = at_ms + duration_ms + int(delay * 1000)
        deadline_ms = delivery.created_ms + int(self.settings.webhook_retry_window_s * 1000)
        outcome: Outcome
        if status is not None and 200 <= status < 300:
            outcome = "succeeded"
        elif error in NOT_RETRIED or next_ms > deadline_ms:
            outcome = "failed"
        else:
            outcome = "retrying"
        entry = DeliveryAttempt(
            delivery_id=delivery.id,
            event=delivery.event,
            attempt=attempt,
            at=at_ms,
            duration_ms=duration_ms,
            status=status,
            error=error,
            outcome=outcome,
            next_attempt_at=next_ms if outcome == "retrying" else None,
        )
        if not await self.store.log(delivery.namespace, delivery.webhook_id, entry):
            return None  # removed while the attempt ran
        if outcome != "retrying":
            name = f"{stats.DELIVERIES}:{outcome}"
            await self.redis.hincrby(self.keys.stats(), stats.field(delivery.namespace, name), 1)
            level = logging.INFO if outcome == "succeeded" else logging.WARNING
            log.log(level, "delivery %s %s after %d attempt(s) (%s)", delivery.id, outcome, attempt, error or status)
        return delay if outcome == "retrying" else None

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str | None]:
        """(status, None) when the receiver answered, else (None, what went wrong)."""
        allow_private = self.settings.webhook_allow_private
        try:
            async with asyncio.timeout(self.settings.webhook_timeout_s):
                target = check_url(url, allow_private=allow_private)  # the rules may be stricter now
                host = target.raw_host.decode("ascii")
                address = await resolve(host, port_of(target), allow_private=allow_private)
                # Connect to the checked address; the Host header and TLS (SNI, certificate) keep the name.
                request = self.http.build_request(
                    "POST",
                    target.copy_with(host=address),
                    content=body,
                    headers={**headers, "Host": target.netloc.decode("ascii")},
                    extensions={"sni_hostname": host} if target.scheme == "https" else {},
                )
                response = await self.http.send(request, stream=True)
                await response.aclose()  # only the status counts: a large or endless body is never read
                return response.status_code, None
        except UnfitURL:
            return None, "url_not_allowed"
        except AddressRefused:
            return None, "address_not_allowed"
        except LookupFailed:
            return None, "dns_failed"
        except (TimeoutError, httpx2.TimeoutException):
            return None, "timeout"
        except (httpx2.HTTPError, OSError):
            return None, "connection_failed"

    async def _now_ms(self) -> int:
        seconds, micros = await self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000


def http_client(settings: Settings) -> httpx2.AsyncClient:
    """The worker's client for deliveries: no redirects, no proxies from the environment (they
    would connect by name, around the address check), no kept-alive connections (each delivery
    connects to the address it checked, never to one another name's TLS was made for)."""
    return httpx2.AsyncClient(
        follow_redirects=False,
        trust_env=False,
        timeout=httpx2.Timeout(settings.webhook_timeout_s),
        limits=httpx2.Limits(max_connections=settings.webhook_max_in_flight, max_keepalive_connections=0),
    )
