"""Send one job to a machine and wait for a definite outcome.

Waits are computed from Redis-clock deadlines the enqueue script returns (deadline minus the
script's own "now"), so the hub never compares its clock with anyone's. At the claim deadline
the hub abandons the job: if that wins, the job will never run ("not started"); if the agent
already claimed it, the hub waits until the job deadline and then reports "unknown". Read-only
jobs have no record: the hub waits for their answer until the deadline, and that is all.
"""

from __future__ import annotations

import asyncio
import enum
import secrets
import time
from dataclasses import dataclass

import msgspec

from api.errors import unavailable
from api.inbox import Inbox
from core.connections import REDIS_ERRORS
from core.envelopes import JobStatus
from core.errors import HubNotConnected, IdempotencyMismatch, MachineBusy
from core.events import JobEvent
from core.names import new_job_id
from core.queue import JobQueue
from core.schemas import CLAIMED_KINDS, FINAL_STATES, Envelope, JobKind, JobState, Reply
from core.settings import Settings


class Verdict(enum.Enum):
    DONE = "done"  # the job reached a final state; see state and result
    OFFLINE = "offline"  # no live heartbeat: nothing was queued
    NOT_STARTED = "not_started"  # abandoned before any agent claimed it; it will never run
    UNKNOWN = "unknown"  # claimed (or a read-only job sent), but no answer by the deadline
    UNAVAILABLE = "unavailable"  # nothing was queued: offline, or not this namespace's machine
    DRAINING = "draining"  # the machine takes no new spawns: nothing was queued
    WAITING = "waiting"  # queued for an offline machine to come online (waitForMachineS): 202


@dataclass(frozen=True, slots=True)
class Outcome:
    job_id: str
    verdict: Verdict
    state: JobState | None = None
    result: bytes = b""


@dataclass(frozen=True, slots=True)
class JobSpec:
    kind: JobKind
    args: bytes  # what the agent gets
    claim_timeout_s: float
    timeout_s: float
    retention_s: float
    offline_result: bytes
    record_args: bytes = b""  # what the job record keeps (a spawn's prompt only as its size and digest)
    wait_s: int = 0  # a spawn to an offline machine waits this long for it instead of failing


class _Code(msgspec.Struct):
    code: str | None = None


_code = msgspec.json.Decoder(_Code)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class Dispatcher:
    def __init__(self, queue: JobQueue, inbox: Inbox, settings: Settings) -> None:
        self.queue = queue
        self.inbox = inbox
        self.settings = settings

    async def submit(
        self, ns: str, machine_id: str, spec: JobSpec, *, idempotency_digest: str = "", fingerprint: str = ""
    ) -> Outcome:
        job_id = new_job_id(machine_id)
        envelope = Envelope(
            job_id=job_id,
            kind=spec.kind,
            args=msgspec.Raw(spec.args),
            reply_to=self.inbox.hub_id,
            secret=secrets.token_hex(16),
            idempotency=idempotency_digest,
        )
        try:
            if spec.kind not in CLAIMED_KINDS:
                outcome = await self._read(ns, machine_id, envelope, spec)
            else:
                outcome = await self._claimed(ns, machine_id, envelope, spec, fingerprint)
        except REDIS_ERRORS as exc:
            if unavailable(exc):
                self.inbox.outages.failed()
            raise
        self.inbox.outages.answered()
        return outcome

    async def _claimed(self, ns: str, machine_id: str, envelope: Envelope, spec: JobSpec, fingerprint: str) -> Outcome:
        job_id = envelope.job_id
        async with self.inbox.expect(machine_id, job_id, envelope.secret) as future:
            enq = await self.queue.enqueue(
                ns,
                machine_id,
                envelope,
                record_args=spec.record_args or spec.args,
                claim_timeout_ms=_ms(spec.claim_timeout_s),
                timeout_ms=_ms(spec.timeout_s),
                retention_ms=_ms(spec.retention_s),
                offline_result=spec.offline_result,
                max_queued=self.settings.max_queued_jobs,
                fingerprint=fingerprint,
                idempotency_ttl_ms=_ms(self.settings.idempotency_ttl_s),
                wait_ms=spec.wait_s * 1000,
            )
            if enq.status == "waiting":
                return Outcome(job_id, Verdict.WAITING, JobState.QUEUED)
            if enq.status == "full":
                raise self._busy(machine_id)
            if enq.status in ("offline", "unknown", "draining"):
                verdict = {"offline": Verdict.OFFLINE, "unknown": Verdict.UNAVAILABLE, "draining": Verdict.DRAINING}
                return Outcome(job_id, verdict[enq.status])
            if enq.status == "queued":
                outcome = await self._wait(
                    ns,
                    machine_id,
                    job_id,
                    future,
                    enq.claim_by_ms - enq.now_ms,
                    enq.deadline_ms - enq.now_ms,
                    spec.kind,
                )
                if outcome.verdict is Verdict.DONE and outcome.state is not None:
                    event = JobEvent(job_id=job_id, machine_id=machine_id, kind=spec.kind, state=outcome.state)
                    await self.queue.publish_final(ns, event, code=_failure_code(outcome.result))
                return outcome
        if enq.fingerprint != fingerprint:
            raise IdempotencyMismatch()
        return await self._join(ns, machine_id, enq.job_id, spec)

    def _busy(self, machine_id: str) -> MachineBusy:
        detail = f"machine {machine_id} has {self.settings.max_queued_jobs} jobs waiting"
        return MachineBusy(detail, limit="max_queued_jobs", retry_after_s=1)

    async def _read(self, ns: str, machine_id: str, envelope: Envelope, spec: JobSpec) -> Outcome:
        """A read-only job's answer; 503 when none came and Redis failed this hub meanwhile (a
        failover may have taken the job or its answer: asking again is safe and may succeed)."""
        started = time.monotonic()
        async with self.inbox.expect(machine_id, envelope.job_id, envelope.secret, read_only=True) as future:
            status = await self.queue.push_read(ns, machine_id, envelope, max_queued=self.settings.max_queued_jobs)
            if status == "full":
                raise self._busy(machine_id)
            if status == "offline":
                return Outcome(envelope.job_id, Verdict.UNAVAILABLE)
            reply = await _within(future, spec.timeout_s)
        if reply is None and self.inbox.outages.failed_since(started):
            raise HubNotConnected()
        if reply is None:
            return Outcome(envelope.job_id, Verdict.UNKNOWN)
        return Outcome(envelope.job_id, Verdict.DONE, reply.state, bytes(reply.result))

    async def _join(self, ns: str, machine_id: str, job_id: str, spec: JobSpec) -> Outcome:
        """Wait for the outcome of a job another request already started (same Idempotency-Key)."""
        status = await self.queue.attach(ns, machine_id, job_id, self.inbox.hub_id)
        if status.state not in ("queued", "running"):
            return _settled(job_id, status)
        if status.state == "queued" and status.wait_ms:
            return Outcome(job_id, Verdict.WAITING, JobState.QUEUED)  # still waiting: the same 202
        async with self.inbox.expect(machine_id, job_id, status.secret) as future:
            # The job may have ended between the attach and now; its reply then came before the
            # future existed, so look once more before waiting.
            status = await self.queue.attach(ns, machine_id, job_id, self.inbox.hub_id)
            if status.state not in ("queued", "running"):
                return _settled(job_id, status)
            return await self._wait(
                ns,
                machine_id,
                job_id,
                future,
                status.claim_by_ms - status.now_ms,
                status.deadline_ms - status.now_ms,
                spec.kind,
            )

    async def _wait(
        self,
        ns: str,
        machine_id: str,
        job_id: str,
        future: asyncio.Future[Reply],
        claim_left_ms: int,
        deadline_left_ms: int,
        kind: JobKind,
    ) -> Outcome:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0, deadline_left_ms) / 1000
        reply = await _within(future, max(0, claim_left_ms) / 1000)
        if reply is None:
            status = await self.queue.abandon(ns, machine_id, job_id, kind, give_up=False)
            if status.state != JobState.RUNNING:
                return _settled(job_id, status)
            reply = await _within(future, deadline - loop.time())
        if reply is not None and reply.state in FINAL_STATES:
            return Outcome(job_id, Verdict.DONE, reply.state, bytes(reply.result))
        return _settled(job_id, await self.queue.abandon(ns, machine_id, job_id, kind, give_up=True))


async def _within(future: asyncio.Future[Reply], timeout_s: float) -> Reply | None:
    if not future.done() and timeout_s > 0:
        await asyncio.wait([future], timeout=timeout_s)
    return future.result() if future.done() else None


def _settled(job_id: str, status: JobStatus) -> Outcome:
    if status.state == JobState.EXPIRED and status.replicated:
        return Outcome(job_id, Verdict.NOT_STARTED, JobState.EXPIRED)
    if status.state == JobState.EXPIRED:
        # Expired on this primary, but not yet on its replicas: a failover could undo that and let
        # a claim through, so "not started" is not certain.
        return Outcome(job_id, Verdict.UNKNOWN, JobState.UNKNOWN)
    if status.state in (JobState.SUCCEEDED, JobState.FAILED):
        return Outcome(job_id, Verdict.DONE, JobState(status.state), status.result)
    return Outcome(job_id, Verdict.UNKNOWN, JobState.UNKNOWN)


def _failure_code(result: bytes) -> str:
    try:
        return _code.decode(result).code or ""
    except msgspec.DecodeError:
        return ""
