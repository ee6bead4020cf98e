"""After a restart: report the spawns an earlier instance of this agent left unfinished.

What the journal says decides the answer, and nothing is ever started again: a job only claimed
was not started; one whose process start was journaled as intended is looked for among the
running processes (its session id is in its environment); one with a journaled outcome gets it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec

from core.queue import JobQueue
from core.schemas import JobState, SpawnResult
from machine_agent.journal import Entry, Event, JobRecord, Journal, now_ms

log = logging.getLogger(__name__)
_encoder = msgspec.json.Encoder()
_result = msgspec.json.Decoder(SpawnResult)


def outcome(record: JobRecord, session_running: Callable[[str], bool]) -> SpawnResult:
    """What the journal says a spawn came to."""
    if record.result:
        return _result.decode(record.result)
    if record.session_id:  # the start was intended, its outcome never written
        if record.session_id and session_running(record.session_id):
            return SpawnResult(success=True, session_id=record.session_id)
        return SpawnResult(
            success=False,
            code="outcome_unknown",
            error="the agent stopped while starting the session; it may have started and ended since",
        )
    return SpawnResult(success=False, code="not_started", error="the agent stopped before starting the session")


async def recover(
    journal: Journal,
    queue: JobQueue,
    *,
    ns: str,
    machine_id: str,
    instance: str,
    session_running: Callable[[str], bool],
) -> int:
    """Report every unfinished job of earlier instances; returns how many were reported."""
    reported = 0
    for record in journal.unfinished(instance):
        result = outcome(record, session_running)
        state = JobState.SUCCEEDED if result.success else JobState.FAILED
        encoded = _encoder.encode(result)
        answer = await queue.recover(ns, machine_id, record.job_id, record.instance, instance, state, encoded)
        if answer is not None:
            await queue.reply(machine_id, record.job_id, state, encoded, answer)
        done = answer is not None
        log.info(
            "job %s of instance %s: %s (%s)",
            record.job_id,
            record.instance,
            result.code or "succeeded",
            "reported" if done else "already settled or gone",
        )
        journal.record(
            Entry(event=Event.REPORTED, job_id=record.job_id, instance=instance, at_ms=now_ms()), durable=False
        )
        reported += done
    return reported
