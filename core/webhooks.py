"""A namespace's webhooks: what they are on the wire, and where Redis keeps them.

Hubs add, list and remove webhooks; the worker reads them to deliver (core.webhook_feed,
core.deliveries) and writes each attempt to the webhook's delivery log. A webhook's record, signing
secret included, lives only in its namespace's hash; no answer but the one that created it shows
the secret.
"""

from __future__ import annotations

import logging
import secrets
from typing import Annotated, Literal, get_args

import msgspec
from redis.asyncio import Redis

from core.destinations import MAX_URL_LENGTH
from core.errors import TooManyWebhooks
from core.events import Event, JobEvent
from core.keys import Keys, valid_webhook_id
from core.lua import Scripts
from core.names import valid_namespace
from core.schemas import Message
from core.signatures import new_secret

log = logging.getLogger(__name__)

EventName = Literal["job.succeeded", "job.failed", "job.expired", "job.unknown", "machine.online", "machine.offline"]
EVENT_NAMES: tuple[EventName, ...] = get_args(EventName)
_BY_TEXT: dict[str, EventName] = {name: name for name in EVENT_NAMES}
DELIVERY_LOG = 100  # attempts kept per webhook
LAST_SEQUENCE = 2**64 - 1  # the largest sequence number of a stream id
Outcome = Literal["succeeded", "retrying", "failed"]
URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s\\]+$"


def event_name(event: Event) -> EventName | None:
    """The webhook event an event of the namespace stream is, or None (a job not yet final, an
    `updated` machine)."""
    kind = "job" if isinstance(event, JobEvent) else "machine"
    return _BY_TEXT.get(f"{kind}.{event.state}")


class WebhookRequest(Message):
    """Body of POST /api/webhooks."""

    # The pattern is what a schema can say of the rules (core.destinations): http or https, no
    # whitespace or backslash; the decoder leaves the URL to those rules and their precise 400s.
    url: Annotated[
        str,
        msgspec.Meta(min_length=1, max_length=MAX_URL_LENGTH, extra_json_schema={"pattern": URL_PATTERN}),
    ]
    events: Annotated[list[EventName], msgspec.Meta(min_length=1, max_length=len(EVENT_NAMES))]


class Webhook(Message, omit_defaults=False):
    """A webhook as GET /api/webhooks shows it: everything but its secret."""

    id: str
    url: str
    events: list[EventName]
    created_at: int


class WebhookCreated(Webhook, omit_defaults=False):
    """POST /api/webhooks: the new webhook and its signing secret, shown this once."""

    secret: str


class WebhookList(Message):
    webhooks: list[Webhook]


class WebhookRecord(Message):
    """A webhook as its namespace's hash keeps it."""

    id: str
    url: str
    events: list[EventName]
    secret: str
    created_ms: int

    def view(self) -> Webhook:
        return Webhook(id=self.id, url=self.url, events=self.events, created_at=self.created_ms)


class DeliveryAttempt(Message, omit_defaults=False):
    """One attempt of one delivery, as the webhook's delivery log keeps it (newest first).

    `status` is the receiver's HTTP status when it answered; `error` names what went wrong
    otherwise (README "Webhooks" lists them); `outcome` is `retrying` when another attempt follows
    at `nextAttemptAt`."""

    delivery_id: str
    event: EventName
    attempt: int
    at: int
    duration_ms: int
    status: int | None
    error: str | None
    outcome: Outcome
    next_attempt_at: int | None = None


class DeliveryList(Message):
    deliveries: list[DeliveryAttempt]


_record_decoder = msgspec.json.Decoder(WebhookRecord)
_attempt_decoder = msgspec.json.Decoder(DeliveryAttempt)
_encoder = msgspec.json.Encoder()


def decode_records(raw: dict[bytes, bytes]) -> list[WebhookRecord]:
    """A namespace hash's webhooks, oldest first; a record that does not decode is skipped."""
    records = []
    for field, value in raw.items():
        try:
            record = _record_decoder.decode(value)
        except msgspec.DecodeError:
            log.error("webhook %r has an unreadable record; skipped", field[:40])
            continue
        if valid_webhook_id(record.id):
            records.append(record)
    return sorted(records, key=lambda r: (r.created_ms, r.id))


class WebhookStore:
    """The webhooks of every namespace under one key prefix."""

    def __init__(self, redis: Redis, keys: Keys, scripts: Scripts) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts

    async def create(self, ns: str, url: str, events: list[EventName], *, limit: int) -> WebhookRecord:
        """Store a new webhook (TooManyWebhooks when the namespace has `limit`)."""
        seconds, micros = await self.redis.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        record = WebhookRecord(
            id=f"wh_{secrets.token_hex(8)}",
            url=url,
            events=list(dict.fromkeys(events)),
            secret=new_secret(),
            created_ms=now_ms,
        )
        # The namespace joins the feed's set first: one there without webhooks costs nothing,
        # a webhook whose namespace is missing from it would never be sent anything.
        await self.redis.sadd(self.keys.webhook_namespaces(), ns)
        added = await self.scripts.run(
            "ADD_WEBHOOK",
            [self.keys.webhooks(ns), self.keys.webhook_cursor(ns)],
            # The last stream id before the creation's millisecond: events of that millisecond
            # (the feed cannot tell them from later ones) are read, and sent to this webhook.
            [limit, record.id, _encoder.encode(record), f"{now_ms - 1}-{LAST_SEQUENCE}"],
        )
        if not int(added):
            raise TooManyWebhooks(
                f"namespace {ns} has {limit} webhooks, the most it may have; remove one first",
                limit="max_webhooks_per_namespace",
            )
        return record

    async def all(self, ns: str) -> list[WebhookRecord]:
        return decode_records(await self.redis.hgetall(self.keys.webhooks(ns)))

    async def get(self, ns: str, webhook_id: str) -> WebhookRecord | None:
        if not valid_webhook_id(webhook_id):
            return None
        raw = await self.redis.hget(self.keys.webhooks(ns), webhook_id)
        records = decode_records({webhook_id.encode(): raw}) if raw is not None else []
        return records[0] if records else None

    async def remove(self, ns: str, webhook_id: str) -> bool:
        """Delete the webhook and its log; deliveries still queued for it find it gone and stop."""
        if not valid_webhook_id(webhook_id):
            return False
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hdel(self.keys.webhooks(ns), webhook_id)
            pipe.delete(self.keys.webhook_deliveries(ns, webhook_id))
            removed, _ = await pipe.execute()
        return bool(removed)

    async def deliveries(self, ns: str, webhook_id: str) -> list[DeliveryAttempt] | None:
        """The webhook's delivery log, newest first, or None when there is no such webhook."""
        if not valid_webhook_id(webhook_id):
            return None
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(self.keys.webhooks(ns), webhook_id)
            pipe.lrange(self.keys.webhook_deliveries(ns, webhook_id), 0, DELIVERY_LOG - 1)
            record, entries = await pipe.execute()
        if record is None:
            return None
        attempts = []
        for raw in entries:
            try:
                attempts.append(_attempt_decoder.decode(raw))
            except msgspec.DecodeError:
                continue
        return attempts

    async def log(self, ns: str, webhook_id: str, attempt: DeliveryAttempt) -> bool:
        """Add an attempt to the webhook's log; False when the webhook is gone."""
        keys = [self.keys.webhooks(ns), self.keys.webhook_deliveries(ns, webhook_id)]
        return bool(await self.scripts.run("LOG_DELIVERY", keys, [webhook_id, _encoder.encode(attempt), DELIVERY_LOG]))

    async def namespaces(self) -> list[str]:
        """The namespaces the feed follows (names checked: a set member never names a key unread)."""
        members = await self.redis.smembers(self.keys.webhook_namespaces())
        names = (m.decode(errors="replace") if isinstance(m, bytes) else str(m) for m in members)
        return sorted(n for n in names if valid_namespace(n))
