"""Jobs that change the machine (spawn, stop): claimed before they run, journaled around a spawn,
and reported until Redis has the report (a read-only job's answer, until its hub stops waiting).

A failover loses the last writes its old primary took: a claim, the pop that took the job from the
mailbox, a result. Redis may then hand the same job to the agent again, queued as if never
claimed. The journal knows the job, so its spawn never starts twice: the second claim is answered
with what the journal holds, once the first run (if it still goes) has ended. A report that failed
because Redis was failing over is sent again until it lands (COMPLETE is a compare-and-set: a
repeat changes nothing), so the job does not stay `unknown` while the agent knows its outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
from redis import exceptions

from core.connections import Backoff
from core.errors import ScriptsNotLoaded
from core.queue import JobQueue
from core.schemas import Envelope, JobKind, JobState, SpawnResult
from core.settings import Settings
from machine_agent.executor import Executor, failpoint
from machine_agent.journal import Entry, Event, Journal, now_ms
from machine_agent.recovery import outcome
from machine_agent.sessions import find_by_env

log = logging.getLogger(__name__)
T = TypeVar("T")
_encoder = msgspec.json.Encoder()
NOT_REPLICATED = _encoder.encode(
    SpawnResult(
        success=False, code="not_started", error="the claim reached no Redis replica in time; nothing was started"
    )
)
# What Redis answers while it fails over (or a new primary still lacks the scripts): worth waiting out.
FAILING_OVER = (
    exceptions.ConnectionError,
    exceptions.TimeoutError,
    exceptions.ClusterDownError,
    exceptions.TryAgainError,
    exceptions.ReadOnlyError,
    ScriptsNotLoaded,
    OSError,
)


async def until_done(
    call: Callable[[], Awaitable[T]],
    what: str,
    *,
    stopping: asyncio.Event,
    reconnect_max_s: float,
    within_s: float = math.inf,
) -> T:
    """`call`'s answer, asked again while Redis fails over, until `stopping` is set or `within_s`
    has passed (then the last error is raised)."""
    backoff = Backoff(reconnect_max_s)
    give_up = time.monotonic() + within_s
    while True:
        try:
            return await call()
        except FAILING_OVER as exc:
            pause = backoff.next()
            if stopping.is_set() or time.monotonic() + pause > give_up:
                raise
            log.log(logging.WARNING if backoff.failures == 1 else logging.DEBUG, "%s: %s; again", what, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), pause)


def session_running(session_id: str) -> bool:
    return find_by_env("MACHINE_HUB_SESSION_ID", session_id) is not None


class ClaimedJobs:
    """Runs the claimed jobs of one agent instance."""

    def __init__(
        self,
        settings: Settings,
        queue: JobQueue,
        journal: Journal,
        executor: Executor,
        *,
        ns: str,
        machine_id: str,
        instance: str,
        stopping: asyncio.Event,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.journal = journal
        self.executor = executor
        self.ns = ns
        self.machine_id = machine_id
        self.instance = instance
        self.stopping = stopping
        self._spawning: dict[str, asyncio.Event] = {}  # spawns running now, set when they end

    async def run(self, job: Envelope) -> None:
        claim = await self.queue.claim(self.ns, self.machine_id, job.job_id, self.instance)
        claimed_at = time.monotonic()
        if claim == "no":
            return  # past its claim deadline or already taken: never run it
        spawn = job.kind is JobKind.SPAWN
        if spawn and job.job_id in self.journal.jobs:
            await self._again(job, claimed_at)
            return
        if claim == "unreplicated":
            # A failover could lose this claim and let the hub report the job as not started: so it
            # is not started, and says so. Journaled, so that a failover handing it out again gets
            # the same answer, never a run.
            log.warning("job %s: the claim reached no replica in time; not running it", job.job_id)
            if spawn:
                self._journal(Event.FINISHED, job, result=NOT_REPLICATED)
            await self._report(job, claimed_at, JobState.FAILED, NOT_REPLICATED)
            return
        if not spawn:
            await self._report(job, claimed_at, *await self.executor.run(job))
            return
        ended = self._spawning[job.job_id] = asyncio.Event()
        try:
            self._journal(Event.CLAIMED, job)
            failpoint(self.settings, "after_claim")
            state, result = await self.executor.run(job)
            failpoint(self.settings, "before_complete")
        finally:
            del self._spawning[job.job_id]
            ended.set()
        await self._report(job, claimed_at, state, result)

    async def _again(self, job: Envelope, claimed_at: float) -> None:
        """A spawn this agent took before came again: answer what the journal says it came to."""
        running = self._spawning.get(job.job_id)
        if running is not None:
            await running.wait()
        result = outcome(self.journal.jobs[job.job_id], session_running)
        log.warning(
            "job %s came again (a failover lost its claim); answering from the journal: %s",
            job.job_id,
            result.code or "succeeded",
        )
        state = JobState.SUCCEEDED if result.success else JobState.FAILED
        await self._report(job, claimed_at, state, _encoder.encode(result))

    async def _report(self, job: Envelope, claimed_at: float, state: JobState, result: bytes) -> None:
        what = f"reporting job {job.job_id}"
        held_ms = round((time.monotonic() - claimed_at) * 1000)  # the end, however late the report lands
        answer = await self._until_done(
            lambda: self.queue.complete(self.ns, self.machine_id, job.job_id, self.instance, state, result, held_ms),
            what,
        )
        if answer is None:
            log.warning("job %s: result refused (another instance owns it now)", job.job_id)
        else:
            await self._until_done(lambda: self.queue.reply(self.machine_id, job.job_id, state, result, answer), what)
        if job.kind is JobKind.SPAWN:
            self._journal(Event.REPORTED, job)

    async def _until_done(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        # Until the agent stops: a restarted agent reports what is left from its journal.
        return await until_done(call, what, stopping=self.stopping, reconnect_max_s=self.settings.reconnect_max_s)

    def _journal(self, event: Event, job: Envelope, result: bytes | None = None) -> None:
        # A claim is not fsynced (losing it to a power cut only makes a report less precise); a
        # result is: it is what a job handed out again is answered with.
        entry = Entry(
            event=event,
            job_id=job.job_id,
            instance=self.instance,
            at_ms=now_ms(),
            idempotency=job.idempotency if result is not None else "",
            result=msgspec.Raw(result) if result is not None else None,
        )
        self.journal.record(entry, durable=result is not None)
