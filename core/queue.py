"""The per-machine job protocol: hub and agent both speak it only through this module.

A job is a hash under its machine's keys; an envelope (id, arguments, reply address) travels
through the machine's mailbox list; replies travel through the asking hub's inbox list. See
core.scripts for the state machine.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from core import scripts
from core.events import EventLog, JobEvent
from core.keys import Keys
from core.schemas import CLAIMED_KINDS, Envelope, JobKind, JobState, Reply

_reply_encoder = msgspec.json.Encoder()
_reply_decoder = msgspec.json.Decoder(Reply)
_envelope_encoder = msgspec.json.Encoder()
_envelope_decoder = msgspec.json.Decoder(Envelope)
log = logging.getLogger(__name__)
INBOX_TTL_MS = 60_000


@dataclass(frozen=True, slots=True)
class Enqueued:
    """Outcome of `enqueue`. Times are Redis-clock milliseconds."""

    status: str  # queued | offline | duplicate | unknown
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


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class JobQueue:
    """Job operations for one key prefix on one Redis client."""

    def __init__(self, redis: Redis, keys: Keys, *, history_length: int = 1000, max_events: int = 10_000) -> None:
        self.redis = redis
        self.keys = keys
        self.history_length = history_length
        self.events = EventLog(keys, max_events=max_events)
        self._enqueue = redis.register_script(scripts.ENQUEUE)
        self._attach = redis.register_script(scripts.ATTACH)
        self._claim = redis.register_script(scripts.CLAIM)
        self._complete = redis.register_script(scripts.COMPLETE)
        self._abandon = redis.register_script(scripts.ABANDON)
        self._recover = redis.register_script(scripts.RECOVER)
        self._finish = redis.register_script(scripts.FINISH)

    async def enqueue(
        self,
        ns: str,
        machine_id: str,
        job_id: str,
        kind: JobKind,
        args: bytes,
        *,
        reply_to: str,
        claim_timeout_ms: int,
        timeout_ms: int,
        retention_ms: int,
        offline_result: bytes,
        idempotency_digest: str = "",
        fingerprint: str = "",
        idempotency_ttl_ms: int = 0,
    ) -> Enqueued:
        """Record the job and push it, or fail fast when the machine has no live heartbeat.

        Status `unknown` means the namespace has no such machine (the caller tells 403 from 404).
        """
        k = self.keys
        envelope = _envelope_encoder.encode(
            Envelope(
                job_id=job_id, kind=kind, args=msgspec.Raw(args), reply_to=reply_to, idempotency=idempotency_digest
            )
        )
        # Read-only jobs (path checks may be large) keep their arguments only in the envelope.
        kept_args = args if kind in CLAIMED_KINDS else b""
        out = await self._enqueue(
            keys=[
                k.heartbeat(ns, machine_id),
                k.mailbox(ns, machine_id),
                k.job(ns, machine_id, job_id),
                k.idempotency(ns, machine_id, idempotency_digest or "-"),
                k.info(ns, machine_id),
                k.history(ns, machine_id),
                k.stats(ns, machine_id),
            ],
            args=[
                job_id,
                kind.value,
                kept_args,
                envelope,
                claim_timeout_ms,
                timeout_ms,
                retention_ms,
                fingerprint if idempotency_digest else "",
                idempotency_ttl_ms,
                machine_id,
                offline_result,
                reply_to,
                self.history_length,
            ],
        )
        status = _s(out[0])
        if status == "duplicate":
            existing_id, _, existing_fp = _s(out[1]).partition(" ")
            return Enqueued("duplicate", existing_id, fingerprint=existing_fp)
        if status == "exists":
            return Enqueued("duplicate", job_id, fingerprint=fingerprint)
        if status in ("offline", "unknown"):
            return Enqueued(status, job_id)
        return Enqueued("queued", job_id, int(out[2]), int(out[3]), int(out[4]))

    async def attach(self, ns: str, machine_id: str, job_id: str, reply_to: str, retention_ms: int) -> JobStatus:
        """Read a job's state and, while it is not final, ask for its reply on `reply_to` too."""
        k = self.keys
        out = await self._attach(
            keys=[k.job(ns, machine_id, job_id), k.waiters(ns, machine_id, job_id)],
            args=[reply_to, retention_ms],
        )
        if _s(out[0]) == "missing":
            return JobStatus("missing")
        return JobStatus(_s(out[0]), bytes(out[1]) if out[1] else b"", int(out[2]), int(out[3]), int(out[4]))

    async def abandon(self, ns: str, machine_id: str, job_id: str, *, give_up: bool) -> JobStatus:
        """At a deadline: expire a job still queued; with give_up, mark a running one unknown."""
        k = self.keys
        out = await self._abandon(
            keys=[k.job(ns, machine_id, job_id), k.running(ns, machine_id), k.stats(ns, machine_id)],
            args=["give_up" if give_up else "expire", job_id],
        )
        return JobStatus(_s(out[0]), bytes(out[1]) if len(out) > 1 and out[1] else b"")

    async def claim(self, ns: str, machine_id: str, job_id: str, instance: str) -> bool:
        """Take a queued job before its claim deadline; False if it was late, taken or gone."""
        k = self.keys
        out = await self._claim(
            keys=[k.job(ns, machine_id, job_id), k.running(ns, machine_id), k.stats(ns, machine_id)],
            args=[instance, job_id],
        )
        return _s(out[0]) == "claimed"

    async def finish(
        self, ns: str, machine_id: str, job: Envelope, instance: str, state: JobState, result: bytes, code: str = ""
    ) -> None:
        """Settle a read-only job without a claim, and reply, in one round trip.

        The reply is sent even if the hub already gave up (then nobody waits for it): the hub
        decides between its abandon and this reply by which one changed the record first.
        """
        reply = _reply_encoder.encode(
            Reply(job_id=job.job_id, machine_id=machine_id, state=state, result=msgspec.Raw(result))
        )
        keys = [self.keys.job(ns, machine_id, job.job_id), self.keys.stats(ns, machine_id)]
        # EVALSHA by hand: a script object in a pipeline costs an extra SCRIPT EXISTS round trip.
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.evalsha(self._finish.sha, len(keys), *keys, instance, state.value, result)
            pipe.lpush(job.reply_to, reply)
            pipe.pexpire(job.reply_to, INBOX_TTL_MS)
            event = JobEvent(job_id=job.job_id, machine_id=machine_id, kind=job.kind, state=state, code=code or None)
            self.events.add(pipe, ns, event)
            settled, *_ = await pipe.execute(raise_on_error=False)
        if isinstance(settled, NoScriptError):  # Redis restarted: the script never ran, so run it now
            await self._finish(keys=keys, args=[instance, state.value, result])
        elif isinstance(settled, Exception):
            raise settled

    async def complete(
        self,
        ns: str,
        machine_id: str,
        job_id: str,
        instance: str,
        state: JobState,
        result: bytes,
        *,
        kind: JobKind,
        code: str = "",
    ) -> bool:
        """Store the result (fenced by instance) and push a reply to every waiting hub."""
        k = self.keys
        out = await self._complete(
            keys=[
                k.job(ns, machine_id, job_id),
                k.waiters(ns, machine_id, job_id),
                k.running(ns, machine_id),
                k.stats(ns, machine_id),
            ],
            args=[instance, state.value, result, job_id],
        )
        event = JobEvent(job_id=job_id, machine_id=machine_id, kind=kind, state=state, code=code or None)
        return await self._notify(out, ns, event, result)

    async def recover(
        self,
        ns: str,
        machine_id: str,
        job_id: str,
        old_instance: str,
        instance: str,
        state: JobState,
        result: bytes,
        *,
        kind: JobKind,
        code: str = "",
    ) -> bool:
        """Finish a job an earlier, now gone, instance of this agent claimed."""
        k = self.keys
        out = await self._recover(
            keys=[
                k.job(ns, machine_id, job_id),
                k.waiters(ns, machine_id, job_id),
                k.heartbeat(ns, machine_id),
                k.running(ns, machine_id),
                k.stats(ns, machine_id),
            ],
            args=[old_instance, instance, state.value, result, job_id],
        )
        event = JobEvent(job_id=job_id, machine_id=machine_id, kind=kind, state=state, code=code or None)
        return await self._notify(out, ns, event, result)

    async def _notify(self, out: list[Any], ns: str, event: JobEvent, result: bytes) -> bool:
        if _s(out[0]) != "done":
            return False
        await self.notify(ns, [_s(x) for x in out[1:]], event, result)
        return True

    async def notify(self, ns: str, inboxes: list[str], event: JobEvent, result: bytes) -> None:
        """Reply to every hub inbox waiting for the job, and record the event, in one round trip."""
        reply = _reply_encoder.encode(
            Reply(
                job_id=event.job_id,
                machine_id=event.machine_id,
                state=JobState(event.state),
                result=msgspec.Raw(result),
            )
        )
        # Replies are notifications: pushing one twice is harmless, the hub resolves a job once.
        async with self.redis.pipeline(transaction=False) as pipe:
            for inbox in dict.fromkeys(x for x in inboxes if x):
                pipe.lpush(inbox, reply)
                pipe.pexpire(inbox, INBOX_TTL_MS)
            self.events.add(pipe, ns, event)
            await pipe.execute()

    async def job(self, ns: str, machine_id: str, job_id: str) -> dict[str, bytes] | None:
        """The job's record as stored, or None when there is none (never was, or expired)."""
        raw = await self.redis.hgetall(self.keys.job(ns, machine_id, job_id))
        return {_s(key): value for key, value in raw.items()} or None

    async def pop_mailbox(
        self, blocking: Redis, ns: str, machine_id: str, timeout_s: float, count: int
    ) -> list[Envelope]:
        """Wait up to timeout_s for jobs on the machine's mailbox (oldest first)."""
        out = await blocking.blmpop(timeout_s, 1, self.keys.mailbox(ns, machine_id), direction="RIGHT", count=count)
        jobs = []
        for raw in out[1] if out else ():
            try:
                jobs.append(_envelope_decoder.decode(raw))
            except msgspec.DecodeError:
                log.error("dropped an unreadable mailbox entry of %s: %r", machine_id, raw[:200])
        return jobs

    async def pop_inbox(self, blocking: Redis, inboxes: Sequence[str], timeout_s: float, count: int) -> list[Reply]:
        """Wait up to timeout_s for replies on any of a hub's inboxes."""
        out = await blocking.blmpop(timeout_s, len(inboxes), *inboxes, direction="RIGHT", count=count)
        if not out:
            return []
        replies = []
        for raw in out[1]:
            try:
                replies.append(_reply_decoder.decode(raw))
            except msgspec.DecodeError:
                continue  # a wake-up token, or a reply from an incompatible agent
        return replies
