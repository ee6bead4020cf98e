"""Runs one claimed job and turns its outcome into a final state and an encoded result."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import uuid
from collections.abc import Callable, Mapping

import msgspec

from core.machine_schemas import DirectoryRequest, DirectoryResult
from core.schemas import (
    Envelope,
    JobKind,
    JobState,
    PathsRequest,
    PathsResult,
    SessionInfo,
    SessionsResult,
    SpawnRequest,
    SpawnResult,
    StopRequest,
    StopResult,
)
from core.settings import Settings
from machine_agent.directories import list_directory
from machine_agent.journal import Entry, Event, Journal, now_ms
from machine_agent.paths import check_paths, real_roots
from machine_agent.recovery import outcome
from machine_agent.sessions import SessionStore
from machine_agent.spawner import Spawner
from machine_agent.tmux import TmuxLauncher

log = logging.getLogger(__name__)
_encoder = msgspec.json.Encoder()
INLINE_PATHS = 16
_spawn_args = msgspec.json.Decoder(SpawnRequest)
_paths_args = msgspec.json.Decoder(PathsRequest)
_stop_args = msgspec.json.Decoder(StopRequest)
_directory_args = msgspec.json.Decoder(DirectoryRequest)


class Executor:
    def __init__(
        self,
        settings: Settings,
        spawner: Spawner,
        journal: Journal,
        sessions: SessionStore,
        tmux: TmuxLauncher | None,
        *,
        namespace: str,
        machine_id: str,
        instance: str,
        env: Mapping[str, str],
        session_running: Callable[[str], bool],
    ) -> None:
        self.session_running = session_running
        self.settings = settings
        self.spawner = spawner
        self.journal = journal
        self.sessions = sessions
        self.tmux = tmux
        self.namespace = namespace
        self.machine_id = machine_id
        self.instance = instance
        self.home = env.get("HOME") or os.path.expanduser("~")
        self.roots = real_roots(settings.roots, self.home)
        self._starting = 0  # spawns between the session-limit check and their outcome

    async def run(self, job: Envelope) -> tuple[JobState, bytes]:
        try:
            match job.kind:
                case JobKind.PATHS:
                    return await self._paths(job)
                case JobKind.SPAWN:
                    return await self._spawn(job)
                case JobKind.SESSIONS:
                    return JobState.SUCCEEDED, _encoder.encode(SessionsResult(sessions=self._running()))
                case JobKind.STOP:
                    session_id = _stop_args.decode(job.args).session_id
                    stopped = await self.sessions.stop(session_id, self.settings.session_stop_grace_s, tmux=self.tmux)
                    return JobState.SUCCEEDED, _encoder.encode(StopResult(stopped=stopped))
                case JobKind.DIRECTORY:
                    return await self._directory(job)
        except msgspec.DecodeError as exc:
            # A hub newer or older than this agent sent arguments it cannot read.
            log.error("job %s: unreadable arguments: %s", job.job_id, exc)
            return JobState.FAILED, self._failure(job.kind, f"unreadable job arguments: {exc}", "bad_request")
        except Exception as exc:
            log.exception("job %s failed", job.job_id)
            return JobState.FAILED, self._failure(job.kind, f"{type(exc).__name__}: {exc}", "agent_error")

    async def _paths(self, job: Envelope) -> tuple[JobState, bytes]:
        request = _paths_args.decode(job.args)
        if len(request.paths) <= INLINE_PATHS:
            # A thread hop costs more than a few stat calls; a hung mount would stall the loop, though.
            exists = check_paths(request.paths, home=self.home, roots=self.roots)
        else:
            exists = await asyncio.to_thread(check_paths, request.paths, home=self.home, roots=self.roots)
        return JobState.SUCCEEDED, _encoder.encode(PathsResult(exists=exists))

    async def _directory(self, job: Envelope) -> tuple[JobState, bytes]:
        request = _directory_args.decode(job.args)
        result = await asyncio.to_thread(
            list_directory, request.path, hidden=request.hidden, home=self.home, roots=self.roots
        )
        return JobState.FAILED if result.code else JobState.SUCCEEDED, _encoder.encode(result)

    async def _spawn(self, job: Envelope) -> tuple[JobState, bytes]:
        request = _spawn_args.decode(job.args)
        earlier = self.journal.by_idempotency.get(job.idempotency) if job.idempotency else None
        if earlier is not None and earlier.job_id != job.job_id:
            # Redis forgot this Idempotency-Key (data loss), the journal did not: never start twice.
            result = outcome(earlier, self.session_running)
            return _state(result), _encoder.encode(result)
        if (full := self._full()) is not None:
            # Claimed, so it finishes: failed, with nothing started (journaled, so a restart says so too).
            encoded = _encoder.encode(full)
            self._log(Event.FINISHED, job, result=encoded)
            return JobState.FAILED, encoded
        # Counted from the check above (no await between) until the session is recorded or failed.
        self._starting += 1
        try:
            session_id = str(uuid.uuid4())
            self._log(Event.INTENT, job, session_id=session_id)
            failpoint(self.settings, "after_intent")
            result = await self.spawner.spawn(
                request, job_id=job.job_id, namespace=self.namespace, machine_id=self.machine_id, session_id=session_id
            )
        finally:
            self._starting -= 1
        failpoint(self.settings, "after_spawn")
        encoded = _encoder.encode(result)
        self._log(Event.FINISHED, job, session_id=session_id, result=encoded)
        return _state(result), encoded

    def _full(self) -> SpawnResult | None:
        """The machine_full refusal when the sessions running and starting reach max_sessions."""
        limit = self.settings.max_sessions
        if not limit:
            return None
        busy = len(self.sessions.running()) + self._starting
        if busy < limit:
            return None
        return SpawnResult(
            success=False,
            code="machine_full",
            error=f"the machine runs {busy} sessions, its limit (MACHINE_HUB_MAX_SESSIONS / --max-sessions {limit})",
        )

    def _log(self, event: Event, job: Envelope, *, session_id: str = "", result: bytes | None = None) -> None:
        entry = Entry(
            event=event,
            job_id=job.job_id,
            instance=self.instance,
            at_ms=now_ms(),
            idempotency=job.idempotency,
            session_id=session_id,
            result=None if result is None else msgspec.Raw(result),
        )
        self.journal.record(entry, durable=True)

    def _running(self) -> list[SessionInfo]:
        return [
            SessionInfo(
                session_id=r.session_id,
                job_id=r.job_id,
                pid=r.pid,
                agent=r.agent,
                directory=r.directory,
                worktree=r.worktree,
                started_at=r.started_at,
                launcher=r.launcher,
            )
            for r in self.sessions.running()
        ]

    @staticmethod
    def _failure(kind: JobKind, error: str, code: str) -> bytes:
        failure: PathsResult | SessionsResult | StopResult | SpawnResult | DirectoryResult
        match kind:
            case JobKind.PATHS:
                failure = PathsResult(error=error, code=code)
            case JobKind.DIRECTORY:
                failure = DirectoryResult(error=error, code=code)
            case JobKind.SESSIONS:
                failure = SessionsResult(error=error, code=code)
            case JobKind.STOP:
                failure = StopResult(error=error, code=code)
            case _:
                failure = SpawnResult(success=False, error=error, code=code)
        return _encoder.encode(failure)


def _state(result: SpawnResult) -> JobState:
    return JobState.SUCCEEDED if result.success else JobState.FAILED


def failpoint(settings: Settings, name: str) -> None:
    """Test hook (MACHINE_HUB_FAILPOINT): die here as a crash would, leaving everything as it is."""
    if settings.failpoint == name:
        os.kill(os.getpid(), signal.SIGKILL)
