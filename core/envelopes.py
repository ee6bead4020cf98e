"""What travels with a job besides its record: envelopes, replies' addresses, and what the job
operations of core.queue return."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import msgspec

from core.schemas import Envelope

log = logging.getLogger(__name__)
_envelope_encoder = msgspec.json.Encoder()
_envelope_decoder = msgspec.json.Decoder(Envelope)


@dataclass(frozen=True, slots=True)
class Enqueued:
    """Outcome of `enqueue`. Times are Redis-clock milliseconds."""

    status: str  # queued | waiting | offline | duplicate | unknown | draining | full
    job_id: str
    now_ms: int = 0
    claim_by_ms: int = 0
    deadline_ms: int = 0
    fingerprint: str = ""


@dataclass(frozen=True, slots=True)
class JobStatus:
    state: str  # a JobState, or "missing"
    result: bytes = b""
    now_ms: int = 0
    claim_by_ms: int = 0
    deadline_ms: int = 0
    secret: str = ""
    wait_ms: int = 0  # a waiting spawn's wait for its machine (core.scripts.ENQUEUE)
    changed: bool = False  # for abandon: this call made the change
    replicated: bool = True  # for abandon: the change reached the replicas asked for (or none were)


@dataclass(frozen=True, slots=True)
class Answer:
    """Where a finished job's reply goes: the asking hub first, then the hubs that joined."""

    origin: str
    joined: tuple[str, ...]
    secret: str


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def answer_of(out: list[Any], first: int) -> Answer:
    origin, waiters, secret = (text(x) for x in out[first : first + 3])
    return Answer(origin, tuple(dict.fromkeys(w for w in waiters.split() if w != origin)), secret)


def encode_envelope(envelope: Envelope) -> bytes:
    return _envelope_encoder.encode(envelope)


def decode_envelopes(raws: Any, machine_id: str) -> list[Envelope]:
    envelopes = []
    for raw in raws:
        try:
            envelopes.append(_envelope_decoder.decode(raw))
        except msgspec.DecodeError:
            log.error("dropped an unreadable mailbox entry of %s: %r", machine_id, bytes(raw)[:200])
    return envelopes
