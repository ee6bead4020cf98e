"""The machine agent: heartbeat, job loop and clean stop, in the shape of uvicorn's server.

startup() registers the machine; main_loop() runs the heartbeat and the mailbox reader side by
side until a stop is asked for; shutdown() lets running jobs finish within a grace period and
deletes the heartbeat so the machine leaves the online list at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path

import msgspec
from redis.exceptions import RedisError

from core.connections import blocking_client, request_client
from core.errors import SettingsError
from core.events import JobEvent
from core.keys import Keys
from core.queue import JobQueue
from core.registry import Registry
from core.schemas import CLAIMED_KINDS, Envelope, JobKind, JobState
from core.settings import Settings
from machine_agent import identity
from machine_agent.executor import Executor, failpoint
from machine_agent.journal import Entry, Event, Journal, now_ms
from machine_agent.launcher import Launcher
from machine_agent.recovery import recover
from machine_agent.sessions import SessionStore, find_by_env
from machine_agent.spawner import Spawner
from machine_agent.tmux import TmuxLauncher

log = logging.getLogger(__name__)


SHUTDOWN_GRACE_S = 10.0


def session_running(session_id: str) -> bool:
    return find_by_env("MACHINE_HUB_SESSION_ID", session_id) is not None


class _Failure(msgspec.Struct):
    code: str | None = None


_failure = msgspec.json.Decoder(_Failure)


def _failure_code(state: JobState, result: bytes) -> str:
    """The `code` of a failed job's result, for the event that reports it."""
    if state is JobState.SUCCEEDED:
        return ""
    try:
        return _failure.decode(result).code or ""
    except msgspec.DecodeError:
        return ""


def choose_launcher(settings: Settings) -> Launcher | TmuxLauncher:
    """tmux when it is there (sessions a person can attach to, that outlive the agent), else a pty."""
    if settings.launcher == "pty":
        return Launcher()
    if TmuxLauncher.available():
        return TmuxLauncher(settings.tmux_socket)
    if settings.launcher == "tmux":
        raise SettingsError("MACHINE_HUB_LAUNCHER is tmux, but tmux is not installed")
    log.warning("tmux not found: sessions run on a pseudo-terminal and end when this agent stops")
    return Launcher()


class Agent:
    def __init__(self, settings: Settings, *, machine_id: str, home: Path, env: Mapping[str, str] = os.environ) -> None:
        self.settings = settings
        self.ns = settings.namespace
        self.machine_id = machine_id
        self.instance = uuid.uuid4().hex
        self.redis = request_client(settings)
        self.blocking = blocking_client(settings)
        keys = Keys(settings.key_prefix)
        self.registry = Registry(self.redis, keys)
        self.queue = JobQueue(self.redis, keys)
        self.launcher = choose_launcher(settings)
        self.metadata = identity.encoded_metadata(self.launcher.name)
        sessions = SessionStore(home)
        spawner = Spawner(settings, home=home, launcher=self.launcher, env=env, sessions=sessions)
        self.journal = Journal(home, retention_s=settings.idempotency_ttl_s)
        self.executor = Executor(
            settings,
            spawner,
            self.journal,
            sessions,
            self.launcher if isinstance(self.launcher, TmuxLauncher) else None,
            namespace=self.ns,
            machine_id=machine_id,
            instance=self.instance,
            env=env,
            session_running=session_running,
        )
        self.should_exit = asyncio.Event()
        self._jobs: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(settings.max_concurrent_jobs)

    async def run(self) -> None:
        with self._capture_signals():
            try:
                await self.startup()
                await self.main_loop()
            finally:
                await self.shutdown()

    async def startup(self) -> None:
        """Register, retrying while Redis is unreachable; a namespace conflict is fatal."""
        await self._retry_until_stopped(self._register, "registering")

    async def _register(self) -> None:
        await self.registry.register(self.ns, self.machine_id, identity.metadata(self.launcher.name))
        await self._beat()
        await self.registry.set_state(self.ns, self.machine_id, "online")
        log.info("machine %s online in namespace %s (instance %s)", self.machine_id, self.ns, self.instance)
        # Only after our heartbeat replaced the old instance's may we settle what it left open.
        await recover(
            self.journal,
            self.queue,
            ns=self.ns,
            machine_id=self.machine_id,
            instance=self.instance,
            session_running=session_running,
        )

    async def _beat(self) -> None:
        ttl_ms = int(self.settings.heartbeat_ttl_s * 1000)
        if not await self.registry.heartbeat(self.ns, self.machine_id, self.instance, self.metadata, ttl_ms):
            log.warning("registration record is gone (Redis lost its data?); registering again")
            await self.registry.register(self.ns, self.machine_id, identity.metadata(self.launcher.name))

    async def main_loop(self) -> None:
        tasks = [asyncio.create_task(self._heartbeat_loop()), asyncio.create_task(self._job_loop())]
        await self.should_exit.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def shutdown(self) -> None:
        if self._jobs:
            log.info("waiting up to %.0fs for %d running jobs", SHUTDOWN_GRACE_S, len(self._jobs))
            await asyncio.wait(self._jobs, timeout=SHUTDOWN_GRACE_S)
        with contextlib.suppress(RedisError, OSError):
            await self.registry.release(self.ns, self.machine_id, self.instance)
            await self.registry.set_state(self.ns, self.machine_id, "offline")
        await self.launcher.close()
        self.journal.close()
        await self.redis.aclose()
        await self.blocking.aclose()
        log.info("machine %s stopped", self.machine_id)

    async def _heartbeat_loop(self) -> None:
        while True:
            # Jitter keeps a fleet started together from beating in lockstep.
            await asyncio.sleep(self.settings.heartbeat_interval_s * random.uniform(0.9, 1.1))
            try:
                await self._beat()
            except RedisError as exc:
                log.warning("heartbeat failed: %s", exc)

    async def _job_loop(self) -> None:
        backoff = 0.05
        while True:
            await self._slots.acquire()
            self._slots.release()
            try:
                jobs = await self.queue.pop_mailbox(
                    self.blocking, self.ns, self.machine_id, self.settings.block_s, count=16
                )
            except RedisError as exc:
                log.warning("mailbox read failed: %s; retrying in %.2fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.settings.reconnect_max_s)
                continue
            backoff = 0.05
            for job in jobs:
                task = asyncio.create_task(self._handle(job))
                self._jobs.add(task)
                task.add_done_callback(self._jobs.discard)
            # Let the new jobs send their first command before this loop sends its next pop.
            await asyncio.sleep(0)

    async def _handle(self, job: Envelope) -> None:
        async with self._slots:
            try:
                if job.kind in CLAIMED_KINDS:
                    await self._claimed(job)
                else:
                    state, result = await self.executor.run(job)
                    await self.queue.finish(
                        self.ns, self.machine_id, job, self.instance, state, result, code=_failure_code(state, result)
                    )
            except RedisError as exc:
                log.warning("job %s: Redis failed: %s", job.job_id, exc)

    async def _claimed(self, job: Envelope) -> None:
        """A job that changes the machine: claimed first, and for a spawn, journaled around it."""
        if not await self.queue.claim(self.ns, self.machine_id, job.job_id, self.instance):
            return  # past its claim deadline or already taken: never run it
        spawn = job.kind is JobKind.SPAWN
        if spawn:
            self._journal(Event.CLAIMED, job.job_id)
            failpoint(self.settings, "after_claim")
        running = JobEvent(job_id=job.job_id, machine_id=self.machine_id, kind=job.kind, state=JobState.RUNNING)
        await self.queue.events.publish(self.redis, self.ns, running)
        state, result = await self.executor.run(job)
        if spawn:
            failpoint(self.settings, "before_complete")
        code = _failure_code(state, result)
        if not await self.queue.complete(
            self.ns, self.machine_id, job.job_id, self.instance, state, result, kind=job.kind, code=code
        ):
            log.warning("job %s: result refused (another instance owns it now)", job.job_id)
        if spawn:
            self._journal(Event.REPORTED, job.job_id)

    def _journal(self, event: Event, job_id: str) -> None:
        # Not fsynced: losing these to a power cut only makes a report less precise ("unknown").
        entry = Entry(event=event, job_id=job_id, instance=self.instance, at_ms=now_ms())
        self.journal.record(entry, durable=False)

    async def _retry_until_stopped(self, step: Callable[[], Awaitable[None]], what: str) -> None:
        backoff = 0.05
        while not self.should_exit.is_set():
            try:
                await step()
                return
            except RedisError as exc:
                log.warning("%s failed: %s; retrying in %.2fs", what, exc, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.should_exit.wait(), backoff)
                backoff = min(backoff * 2, self.settings.reconnect_max_s)

    @contextlib.contextmanager
    def _capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._handle_exit, sig)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def _handle_exit(self, sig: int) -> None:
        if self.should_exit.is_set() and sig == signal.SIGINT:
            log.warning("second interrupt: exiting now")
            os._exit(130)
        log.info("received %s, stopping", signal.Signals(sig).name)
        self.should_exit.set()
