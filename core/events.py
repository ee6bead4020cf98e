"""The namespace's event stream: machines coming and going, jobs changing state.

One Redis stream per namespace, trimmed to a bounded length; an event's id is its stream id, so
a client that reconnects with Last-Event-ID misses nothing still retained. Events are for live
views only: the job records and the heartbeat keys stay the truth.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from redis.asyncio import Redis

from core.keys import Keys

MAX_EVENTS = 10_000


class MachineEvent(msgspec.Struct, tag="machine", tag_field="type", kw_only=True, omit_defaults=True, rename="camel"):
    machine_id: str
    state: Literal["online", "offline", "updated"]


class JobEvent(msgspec.Struct, tag="job", tag_field="type", kw_only=True, omit_defaults=True, rename="camel"):
    job_id: str
    machine_id: str
    kind: str
    state: str
    code: str | None = None


Event = MachineEvent | JobEvent
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


def decode(data: bytes) -> Event:
    event: Event = _decoder.decode(data)
    return event


class EventLog:
    """Append to and read from the namespace streams of one key prefix."""

    def __init__(self, keys: Keys, *, max_events: int = MAX_EVENTS) -> None:
        self.keys = keys
        self.max_events = max_events

    def add(self, pipe: Any, ns: str, event: Event) -> None:
        """Queue the event on a pipeline, to travel with the write it describes."""
        pipe.xadd(self.keys.events(ns), {"e": encode(event)}, maxlen=self.max_events, approximate=True)

    async def publish(self, redis: Redis, ns: str, event: Event) -> None:
        await redis.xadd(self.keys.events(ns), {"e": encode(event)}, maxlen=self.max_events, approximate=True)

    async def read(
        self, blocking: Redis, ns: str, after: str, block_s: float, count: int = 100
    ) -> list[tuple[str, Event]]:
        """Events after stream id `after` ("$" for only new ones), waiting up to block_s."""
        out = await blocking.xread({self.keys.events(ns): after}, count=count, block=max(1, int(block_s * 1000)))
        events: list[tuple[str, Event]] = []
        for _key, entries in out or ():
            for entry_id, fields in entries:
                try:
                    events.append((entry_id.decode(), decode(fields[b"e"])))
                except (msgspec.DecodeError, KeyError):
                    continue
        return events

    async def last_id(self, redis: Redis, ns: str) -> str:
        """The id of the newest retained event, or "0-0"."""
        newest = await redis.xrevrange(self.keys.events(ns), count=1)
        return newest[0][0].decode() if newest else "0-0"
