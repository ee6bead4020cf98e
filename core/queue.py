"""The per-machine job protocol: hubs, agents and the worker speak it only through this module.

A recorded job (spawn, stop) is a JSON string under its machine's keys; its envelope (id,
arguments, the asking hub's id, the job's secret) travels through the machine's mailbox list;
the answer travels through the asking hub's inbox. Read-only jobs have no record at all. This
module and core.registry are the only callers of the Lua scripts and the only writers of events.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from redis.asyncio import Redis

from core import stats
from core.envelopes import Answer, Enqueued, JobStatus, answer_of, decode_envelopes, encode_envelope, text
from core.events import EventLog, JobEvent
from core.keys import Keys, valid_hub_id, waiting_member
from core.lua import Scripts
from core.schemas import Envelope, JobKind, JobRecord, JobState, Reply

log = logging.getLogger(__name__)
_reply_encoder = msgspec.json.Encoder()
_reply_decoder = msgspec.json.Decoder(Reply)
_record_decoder = msgspec.json.Decoder(JobRecord)
FINAL_EVENT_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.EXPIRED, JobState.UNKNOWN})


class JobQueue:
    """Job operations for one key prefix on one Redis client."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        scripts: Scripts,
        *,
        max_events: int = 10_000,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 500,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts
        self.events = EventLog(keys, max_events=max_events)
        # With replicas, a claim or an abandon is acted on only once replicated (WAIT): a failover
        # could otherwise lose the one write that decides whether a spawn runs.
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms

    async def _decisive(self, name: str, keys: list[str], args: list[Any]) -> tuple[Any, bool]:
        """Run a claim or abandon script; whether its writes reached the replicas asked for."""
        if not self.wait_replicas:
            return await self.scripts.run(name, keys, args), True
        out, acked = await self.scripts.run_and_wait(
            name, keys, args, replicas=self.wait_replicas, timeout_ms=self.wait_timeout_ms
        )
        return out, acked >= self.wait_replicas

    async def enqueue(
        self,
        ns: str,
        machine_id: str,
        envelope: Envelope,
        *,
        record_args: bytes,
        claim_timeout_ms: int,
        timeout_ms: int,
        retention_ms: int,
        offline_result: bytes,
        max_queued: int,
        fingerprint: str = "",
        idempotency_ttl_ms: int = 0,
        wait_ms: int = 0,
    ) -> Enqueued:
        """Record a spawn or stop and push it, or fail fast when the machine has no heartbeat.

        `unknown` means the namespace has no such machine (the caller tells 403 from 404); a job
        that was recorded (queued, waiting or offline) is added to the namespace's job index. With
        `wait_ms`, a spawn to a machine without a heartbeat is `waiting`: queued for it to come
        online within that time, and handed to the worker, which settles it (core.waiting).
        """
        k = self.keys
        job_id = envelope.job_id
        out = await self.scripts.run(
            "ENQUEUE",
            [
                k.heartbeat(ns, machine_id),
                k.reg(ns, machine_id),
                k.mailbox(ns, machine_id),
                k.job(ns, machine_id, job_id),
                k.idempotency(ns, machine_id, envelope.idempotency or "-"),
                k.waiting(ns, machine_id),
            ],
            [
                job_id,
                envelope.kind.value,
                machine_id,
                record_args,
                encode_envelope(envelope),
                claim_timeout_ms,
                timeout_ms,
                retention_ms,
                fingerprint if envelope.idempotency else "",
                idempotency_ttl_ms,
                offline_result,
                envelope.reply_to,
                envelope.secret,
                max_queued,
                wait_ms,
            ],
        )
        status = text(out[0])
        if status == "duplicate":
            existing_id, _, existing_fp = text(out[1]).partition(" ")
            return Enqueued("duplicate", existing_id, fingerprint=existing_fp)
        if status in ("unknown", "draining", "full"):
            return Enqueued(status, job_id)
        now = int(out[1])
        if status == "waiting":
            event = JobEvent(job_id=job_id, machine_id=machine_id, kind=envelope.kind, state="waiting")
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zadd(k.jobs(ns), {job_id: now})
                pipe.zadd(k.waiting_due(), {waiting_member(ns, job_id): now})
                self.events.add(pipe, ns, event)
                await pipe.execute()
            return Enqueued("waiting", job_id, now, int(out[2]), int(out[3]))
        await self.redis.zadd(k.jobs(ns), {job_id: now})
        if status == "offline":
            event = JobEvent(job_id=job_id, machine_id=machine_id, kind=envelope.kind, state=JobState.FAILED)
            await self.publish_final(ns, event, code="machine_offline")
            return Enqueued("offline", job_id, now)
        return Enqueued("queued", job_id, now, int(out[2]), int(out[3]))

    async def push_read(self, ns: str, machine_id: str, envelope: Envelope, *, max_queued: int) -> str:
        """Push a read-only job: `queued`, `offline` (no heartbeat) or `full`."""
        k = self.keys
        depth = await self.scripts.run(
            "PUSH_READ",
            [k.heartbeat(ns, machine_id), k.mailbox(ns, machine_id)],
            [encode_envelope(envelope), max_queued],
        )
        return {-1: "offline", -2: "full"}.get(int(depth), "queued")

    async def attach(self, ns: str, machine_id: str, job_id: str, hub_id: str) -> JobStatus:
        """Read a job's state and, while it is not final, ask for its reply on this hub too."""
        out = await self.scripts.run("ATTACH", [self.keys.job(ns, machine_id, job_id)], [hub_id])
        if text(out[0]) == "missing":
            return JobStatus("missing")
        state, result, now, claim_by, deadline, secret, wait_ms = out
        return JobStatus(
            text(state), _b(result), int(now), int(claim_by), int(deadline), text(secret), wait_ms=int(wait_ms)
        )

    async def abandon(self, ns: str, machine_id: str, job_id: str, kind: JobKind, *, give_up: bool) -> JobStatus:
        """At a deadline: expire a job still queued; with give_up, mark a running one unknown.

        Only the call that changed the job publishes its event.
        """
        out, replicated = await self._decisive(
            "ABANDON", [self.keys.job(ns, machine_id, job_id)], ["give_up" if give_up else "expire"]
        )
        if text(out[0]) == "missing":
            return JobStatus("missing")
        changed, state = text(out[0]) == "changed", text(out[1])
        if changed:
            await self.publish_final(ns, JobEvent(job_id=job_id, machine_id=machine_id, kind=kind, state=state))
        return JobStatus(state, _b(out[2]), changed=changed, replicated=replicated)

    async def claim(self, ns: str, machine_id: str, job_id: str, instance: str) -> str:
        """Take a queued job before its claim deadline: `claimed`; `unreplicated` when the claim
        did not reach the replicas in time (the job must not run); `no` if late, taken or gone."""
        out, replicated = await self._decisive("CLAIM", [self.keys.job(ns, machine_id, job_id)], [instance])
        if text(out[0]) != "claimed":
            return "no"
        return "claimed" if replicated else "unreplicated"

    async def complete(
        self, ns: str, machine_id: str, job_id: str, instance: str, state: JobState, result: bytes, held_ms: int = 0
    ) -> Answer | None:
        """Store the result (fenced by instance); where to answer, or None if it was refused.

        `held_ms`: how long the instance held the job from its claim to its end; the record's
        `finishedMs` is the claim's time plus that."""
        out = await self.scripts.run(
            "COMPLETE", [self.keys.job(ns, machine_id, job_id)], [instance, state.value, result, held_ms]
        )
        return answer_of(out, 1) if text(out[0]) == "done" else None

    async def recover(
        self,
        ns: str,
        machine_id: str,
        job_id: str,
        old_instance: str,
        instance: str,
        state: JobState,
        result: bytes,
    ) -> Answer | None:
        """Finish a job an earlier, now gone, instance of this agent claimed."""
        k = self.keys
        out = await self.scripts.run(
            "RECOVER",
            [k.job(ns, machine_id, job_id), k.heartbeat(ns, machine_id)],
            [old_instance, instance, state.value, result],
        )
        return answer_of(out, 1) if text(out[0]) == "done" else None

    async def reply(self, machine_id: str, job_id: str, state: JobState, result: bytes, answer: Answer) -> None:
        """Push the reply to every hub waiting for it, in one round trip.

        Hub ids come from records a machine can write, so each is checked before it names a key.
        Replies are notifications: pushing one twice is harmless, a hub resolves a job once.
        """
        pushes = []
        for hub, origin in [(answer.origin, True), *((hub, False) for hub in answer.joined)]:
            if not valid_hub_id(hub):
                log.warning("job %s names no valid hub to answer (%r); not answered", job_id, hub[:40])
                continue
            reply = Reply(
                job_id=job_id,
                machine_id=machine_id,
                state=state,
                result=msgspec.Raw(result or b"null"),
                secret=answer.secret,
                origin=origin,
            )
            pushes.append((self.keys.inbox(hub), _reply_encoder.encode(reply)))
        if len(pushes) == 1:  # the usual case, without a pipeline's own cost
            await self.redis.lpush(*pushes[0])
        elif pushes:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key, payload in pushes:
                    pipe.lpush(key, payload)
                await pipe.execute()

    async def publish_final(self, ns: str, event: JobEvent, code: str = "") -> None:
        """The event of a recorded job that ended, and its fleet counter, in one round trip."""
        if code and event.code is None:
            event = msgspec.structs.replace(event, code=code)
        async with self.redis.pipeline(transaction=False) as pipe:
            self.events.add(pipe, ns, event)
            stats.add(pipe, self.keys, ns, f"{stats.FINISHED}:{event.state}")
            await pipe.execute()

    # The worker's side (core.sweeps): a machine went offline, or the instance that claimed a job.

    async def drain(self, ns: str, machine_id: str) -> list[Envelope]:
        """Take every envelope off the mailbox of a machine without a heartbeat (none if it has one)."""
        k = self.keys
        raws = await self.scripts.run("DRAIN", [k.mailbox(ns, machine_id), k.heartbeat(ns, machine_id)], [])
        return decode_envelopes(raws or (), machine_id)

    async def orphan(self, ns: str, machine_id: str, job_id: str, offline_result: bytes) -> str:
        """Settle a job its machine left behind (core.machine_scripts.ORPHAN), answering and publishing once.

        Returns `failed` (was queued, no heartbeat), `unknown` (its claimer is gone), `alive`,
        `skip` (already settled) or `missing`.
        """
        k = self.keys
        out = await self.scripts.run(
            "ORPHAN", [k.job(ns, machine_id, job_id), k.heartbeat(ns, machine_id)], [offline_result]
        )
        status = text(out[0])
        if status == "failed":
            kind = text(out[1])
            await self.reply(machine_id, job_id, JobState.FAILED, offline_result, answer_of(out, 2))
            event = JobEvent(job_id=job_id, machine_id=machine_id, kind=kind, state=JobState.FAILED)
            await self.publish_final(ns, event, code="machine_offline")
        elif status == "unknown":
            event = JobEvent(job_id=job_id, machine_id=machine_id, kind=text(out[1]), state=JobState.UNKNOWN)
            await self.publish_final(ns, event)
        return status

    async def record(self, ns: str, machine_id: str, job_id: str) -> JobRecord | None:
        """The job's record as stored, or None when there is none (never was, or expired)."""
        raw = await self.redis.get(self.keys.job(ns, machine_id, job_id))
        if raw is None:
            return None
        try:
            return _record_decoder.decode(raw)
        except msgspec.DecodeError:
            log.error("job %s has an unreadable record", job_id)
            return None

    async def pop_mailbox(
        self, blocking: Redis, ns: str, machine_id: str, timeout_s: float, count: int
    ) -> list[Envelope]:
        """Wait up to timeout_s for jobs on the machine's mailbox (oldest first)."""
        out = await blocking.blmpop(timeout_s, 1, self.keys.mailbox(ns, machine_id), direction="RIGHT", count=count)
        return decode_envelopes(out[1] if out else (), machine_id)

    async def pop_inbox(self, blocking: Redis, hub_id: str, timeout_s: float, count: int) -> list[Reply]:
        """Wait up to timeout_s for replies on a hub's inbox; unreadable entries are dropped."""
        out = await blocking.blmpop(timeout_s, 1, self.keys.inbox(hub_id), direction="RIGHT", count=count)
        replies = []
        for raw in out[1] if out else ():
            try:
                replies.append(_reply_decoder.decode(raw))
            except msgspec.DecodeError:
                continue  # junk any machine may push; only replies with a job's secret count
        return replies


def _b(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value or "").encode()
