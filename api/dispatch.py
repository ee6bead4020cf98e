"""Send one job to a machine and wait for a definite outcome.

Waits are computed from Redis-clock deadlines the enqueue script returns (deadline minus the
script's own "now"), so the hub never compares its clock with anyone's. At the claim deadline
the hub abandons the job: if that wins, the job will never run ("not started"); if the agent
already claimed it, the hub waits until the job deadline and then reports "unknown".
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass

from api.inbox import Inbox
from core.errors import IdempotencyMismatch
from core.events import JobEvent
from core.names import new_job_id
from core.queue import JobQueue, JobStatus
from core.schemas import CLAIMED_KINDS, FINAL_STATES, JobKind, JobState, Reply
from core.settings import Settings


class Verdict(enum.Enum):
    DONE = "done"  # the job reached a final state; see state and result
    OFFLINE = "offline"  # no live heartbeat: nothing was queued
    NOT_STARTED = "not_started"  # abandoned before any agent claimed it; it will never run
    UNKNOWN = "unknown"  # claimed, but no answer by the deadline
    UNREGISTERED = "unregistered"  # the caller's namespace has no such machine: nothing was queued


@dataclass(frozen=True, slots=True)
class Outcome:
    job_id: str
    verdict: Verdict
    state: JobState | None = None
    result: bytes = b""


@dataclass(frozen=True, slots=True)
class JobSpec:
    kind: JobKind
    args: bytes
    claim_timeout_s: float
    timeout_s: float
    retention_s: float
    offline_result: bytes


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
        async with self.inbox.expect(ns, machine_id, job_id) as future:
            enq = await self.queue.enqueue(
                ns,
                machine_id,
                job_id,
                spec.kind,
                spec.args,
                reply_to=self.inbox.address(ns),
                claim_timeout_ms=_ms(spec.claim_timeout_s),
                timeout_ms=_ms(spec.timeout_s),
                retention_ms=_ms(spec.retention_s),
                offline_result=spec.offline_result,
                idempotency_digest=idempotency_digest,
                fingerprint=fingerprint,
                idempotency_ttl_ms=_ms(self.settings.idempotency_ttl_s),
            )
            if enq.status == "offline":
                return Outcome(job_id, Verdict.OFFLINE)
            if enq.status == "unknown":
                return Outcome(job_id, Verdict.UNREGISTERED)
            if enq.status == "queued":
                if spec.kind in CLAIMED_KINDS:
                    await self._publish(ns, machine_id, job_id, spec.kind, JobState.QUEUED)
                return await self._wait(
                    ns,
                    machine_id,
                    job_id,
                    future,
                    enq.claim_by_ms - enq.now_ms,
                    enq.deadline_ms - enq.now_ms,
                    spec.kind,
                    give_up=spec.kind in CLAIMED_KINDS,
                )
        if enq.fingerprint != fingerprint:
            raise IdempotencyMismatch()
        return await self._join(ns, machine_id, enq.job_id, spec)

    async def _join(self, ns: str, machine_id: str, job_id: str, spec: JobSpec) -> Outcome:
        """Wait for the outcome of a job another request already started (same Idempotency-Key)."""
        async with self.inbox.expect(ns, machine_id, job_id) as future:
            status = await self.queue.attach(ns, machine_id, job_id, self.inbox.address(ns), _ms(spec.retention_s))
            if status.state in ("queued", "running"):
                return await self._wait(
                    ns,
                    machine_id,
                    job_id,
                    future,
                    status.claim_by_ms - status.now_ms,
                    status.deadline_ms - status.now_ms,
                    spec.kind,
                    give_up=spec.kind in CLAIMED_KINDS,
                )
        return _settled(job_id, status)

    async def _wait(
        self,
        ns: str,
        machine_id: str,
        job_id: str,
        future: asyncio.Future[Reply],
        claim_left_ms: int,
        deadline_left_ms: int,
        kind: JobKind,
        *,
        give_up: bool,
    ) -> Outcome:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0, deadline_left_ms) / 1000
        reply = await _within(future, max(0, claim_left_ms) / 1000)
        if reply is None:
            status = await self._abandon(ns, machine_id, job_id, kind, give_up=False)
            if status.state != JobState.RUNNING:
                return _settled(job_id, status)
            reply = await _within(future, deadline - loop.time())
        if reply is not None and reply.state in FINAL_STATES:
            return Outcome(job_id, Verdict.DONE, reply.state, bytes(reply.result))
        return _settled(job_id, await self._abandon(ns, machine_id, job_id, kind, give_up=give_up))

    async def _abandon(self, ns: str, machine_id: str, job_id: str, kind: JobKind, *, give_up: bool) -> JobStatus:
        status = await self.queue.abandon(ns, machine_id, job_id, give_up=give_up)
        if status.state in (JobState.EXPIRED, JobState.UNKNOWN) and not status.result:
            await self._publish(ns, machine_id, job_id, kind, JobState(status.state))
        return status

    async def _publish(self, ns: str, machine_id: str, job_id: str, kind: JobKind, state: JobState) -> None:
        event = JobEvent(job_id=job_id, machine_id=machine_id, kind=kind, state=state)
        await self.queue.events.publish(self.queue.redis, ns, event)


async def _within(future: asyncio.Future[Reply], timeout_s: float) -> Reply | None:
    if not future.done() and timeout_s > 0:
        await asyncio.wait([future], timeout=timeout_s)
    return future.result() if future.done() else None


def _settled(job_id: str, status: JobStatus) -> Outcome:
    if status.state == JobState.EXPIRED:
        return Outcome(job_id, Verdict.NOT_STARTED, JobState.EXPIRED)
    if status.state in (JobState.SUCCEEDED, JobState.FAILED):
        return Outcome(job_id, Verdict.DONE, JobState(status.state), status.result)
    return Outcome(job_id, Verdict.UNKNOWN, JobState.UNKNOWN)
