"""The machine agent: one loop that keeps the heartbeat and takes jobs, in the shape of uvicorn's server.

startup() asks the AI CLIs for their versions, announces the machine and recovers what an earlier
instance left; main_loop() runs the mailbox loop (and, rarely, asks the CLIs again) until a stop
is asked for; shutdown() lets running jobs finish within a grace period
and deletes the heartbeat so the machine leaves the online list at once.

An idle agent holds one Redis connection: the loop sends its heartbeat and its next blocking pop
together, and blocks at most until the next beat is due, so "online" means this loop is alive.
What the machine is (its `info`: host, CLIs found, labels) rides on the same connection, ahead of
the next pop, at start, when the CLIs say something new, and when a beat finds the heartbeat lost
(Redis restarted): a fleet coming back after a restart needs one connection per machine, not two.
Jobs write through a second connection, which is closed again once the agent has been idle a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import msgspec

from core.connections import (
    Backoff,
    blocking_client,
    drop_idle_connections,
    request_client,
)
from core.envelopes import Answer, decode_envelopes
from core.errors import SettingsError
from core.keys import Keys
from core.lua import Scripts
from core.machine_schemas import Beat, MachineInfo
from core.names import parse_labels
from core.queue import JobQueue
from core.registry import Registry
from core.schemas import CLAIMED_KINDS, Envelope
from core.settings import Settings
from machine_agent import identity
from machine_agent.claims import ClaimedJobs, session_running, until_done
from machine_agent.executor import Executor
from machine_agent.health import read_health
from machine_agent.journal import Journal
from machine_agent.launcher import Launcher
from machine_agent.probe import probe
from machine_agent.recovery import recover
from machine_agent.retries import REMOVED_EXIT_STATUS, TRANSIENT, Retries
from machine_agent.sessions import SessionStore
from machine_agent.spawner import Spawner, session_environment
from machine_agent.tmux import TmuxLauncher

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 10.0


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
        scripts = Scripts(self.redis, can_load=False)
        self.registry = Registry(self.redis, keys, scripts, max_events=settings.max_events)
        self.queue = JobQueue(
            self.redis,
            keys,
            scripts,
            max_events=settings.max_events,
            wait_replicas=settings.redis_wait_replicas,
            wait_timeout_ms=int(settings.redis_wait_timeout_s * 1000),
        )
        self.launcher = choose_launcher(settings)
        self.cli_env = session_environment(env)  # the CLIs are asked their versions as sessions run them
        self.cli_home = self.cli_env.get("HOME") or os.path.expanduser("~")
        self.info = identity.info(
            self.launcher.name,
            agents=None,
            labels=parse_labels(settings.labels),
            max_sessions=settings.max_sessions,
        )
        self.sessions = sessions = SessionStore(home)
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
        self.claims = ClaimedJobs(
            settings,
            self.queue,
            self.journal,
            self.executor,
            ns=self.ns,
            machine_id=machine_id,
            instance=self.instance,
            stopping=self.should_exit,
        )
        self.retries = Retries(settings, ns=self.ns, machine_id=machine_id, stopping=self.should_exit)
        self._loop_failed = False
        self._jobs: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(settings.max_concurrent_jobs)
        self._idle_since = 0.0
        self._first_probe: asyncio.Task[bool] | None = None
        self._announced: MachineInfo | None = None  # what the `info` key holds, as far as we know

    @property
    def exit_status(self) -> int:
        """0, or 1 when the mailbox loop failed, or REMOVED_EXIT_STATUS (README, "Security model")."""
        return REMOVED_EXIT_STATUS if self.retries.removed else int(self._loop_failed)

    async def run(self) -> int:
        with self._capture_signals():
            try:
                await self.startup()
                await self.main_loop()
            finally:
                await self.shutdown()
        return self.exit_status

    async def startup(self) -> None:
        """Announce the machine with its first beat, retrying while Redis is unreachable, then
        recover earlier jobs."""
        # Recovery needs our heartbeat in place first, so that RECOVER sees the old instance gone.
        await self.retries.until_stopped(self._first_beat, "the first heartbeat")
        # Only then are the CLIs asked (main_loop announces what they say): starting them must not
        # keep the machine offline any longer, e.g. across an agent restart.
        self._first_probe = asyncio.create_task(self._probe_clis())
        await self.retries.until_stopped(self._recover, "reporting an earlier instance's jobs")

    async def _probe_clis(self) -> bool:
        """Ask the CLIs for their versions; whether the answer differs from what was announced."""
        agents = await probe(self.settings.agent_commands, self.cli_env, self.cli_home)
        if agents == self.info.agents:
            return False
        log.info("AI CLIs found: %s", ", ".join(f"{k} {v or '(no version)'}" for k, v in agents.items()) or "none")
        self.info = msgspec.structs.replace(self.info, agents=agents)
        return True

    async def _probe_loop(self) -> None:
        """Now and then ask the CLIs again (one may have been installed or upgraded); the mailbox
        loop announces a change with its next pop."""
        while True:
            await asyncio.sleep(self.settings.cli_probe_interval_s)
            await self._probe_clis()

    async def _first_beat(self) -> None:
        """What the machine is, then its heartbeat, on the connection the mailbox loop goes on with."""
        info = self.info
        async with self.blocking.pipeline(transaction=False) as pipe:
            self.registry.announce(pipe, self.ns, self.machine_id, info)
            self.registry.beat(pipe, self.ns, self.machine_id, self.instance, self._beat())
            await pipe.execute()
        self._announced = info
        log.info("machine %s online in namespace %s (instance %s)", self.machine_id, self.ns, self.instance)

    async def _recover(self) -> None:
        await recover(
            self.journal,
            self.queue,
            ns=self.ns,
            machine_id=self.machine_id,
            instance=self.instance,
            session_running=session_running,
        )

    def _beat(self) -> Beat:
        """The heartbeat's payload: counts and health ride along, at no extra Redis command."""
        ttl_ms = int(self.settings.heartbeat_ttl_s * 1000)
        return Beat(
            ttl_ms=ttl_ms, in_flight=len(self._jobs), sessions=len(self.sessions.running()), health=read_health()
        )

    async def main_loop(self) -> None:
        loops = [asyncio.create_task(self._mailbox_loop()), asyncio.create_task(self._probe_loop())]
        stop = asyncio.create_task(self.should_exit.wait())
        await asyncio.wait([loops[0], stop], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        mailbox = loops[0]
        if mailbox.done() and not mailbox.cancelled() and (error := mailbox.exception()) is not None:
            # A loop that died would leave a process that looks alive but never beats: exit, so
            # that whatever supervises the agent starts it again.
            log.critical("the mailbox loop failed; stopping", exc_info=error)
            self._loop_failed = True
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)

    async def shutdown(self) -> None:
        if self._first_probe is not None and not self._first_probe.done():
            self._first_probe.cancel()
            await asyncio.gather(self._first_probe, return_exceptions=True)
        if self._jobs:
            log.info("waiting up to %.0fs for %d running jobs", SHUTDOWN_GRACE_S, len(self._jobs))
            await asyncio.wait(self._jobs, timeout=SHUTDOWN_GRACE_S)
        with contextlib.suppress(*TRANSIENT):
            await self.registry.release(self.ns, self.machine_id, self.instance)
        await self.launcher.close()
        self.journal.close()
        await self.redis.aclose()
        await self.blocking.aclose()
        log.info("machine %s stopped", self.machine_id)

    async def _mailbox_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.settings.heartbeat_interval_s
        next_beat = loop.time() + interval * random.uniform(0.9, 1.1)
        backoff = Backoff(self.settings.reconnect_max_s)
        while True:
            await self._slots.acquire()
            self._slots.release()
            now = loop.time()
            beat = now >= next_beat
            if beat:
                # The next beat is due an interval after this one (not after this pop, which would
                # make it two); jitter keeps a fleet started together from beating in lockstep.
                next_beat = now + interval * random.uniform(0.9, 1.1)
            wait_s = max(0.01, min(self.settings.block_s, next_beat - now))
            try:
                jobs = await self._beat_and_pop(beat, wait_s)
            except TRANSIENT as exc:
                if beat:
                    next_beat = loop.time()  # it may not have landed: beat again as soon as Redis answers
                await self.retries.failed("mailbox read", exc, backoff)
                continue
            backoff.reset()
            self.retries.succeeded()
            for job in jobs:
                task = asyncio.create_task(self._handle(job))
                self._jobs.add(task)
                task.add_done_callback(self._jobs.discard)
            await self._close_idle_connections(loop.time())
            # Let the new jobs send their first command before this loop sends its next pop.
            await asyncio.sleep(0)

    async def _beat_and_pop(self, beat: bool, wait_s: float) -> list[Envelope]:
        """Metadata (when changed), heartbeat (when due) and the next blocking pop, in one round
        trip on one connection."""
        info = self.info if self.info != self._announced else None
        if not beat and info is None:
            return await self.queue.pop_mailbox(self.blocking, self.ns, self.machine_id, wait_s, count=16)
        async with self.blocking.pipeline(transaction=False) as pipe:
            if info is not None:
                self.registry.announce(pipe, self.ns, self.machine_id, info)
            if beat:
                self.registry.beat(pipe, self.ns, self.machine_id, self.instance, self._beat())
            pipe.blmpop(wait_s, 1, self.queue.keys.mailbox(self.ns, self.machine_id), direction="RIGHT", count=16)
            out = await pipe.execute()
        popped, previous = out[-1], out[-2] if beat else b""
        if info is not None:
            self._announced = info
        if beat and (previous is None or not previous.startswith(self.instance.encode())):
            # Expired (a stall), lost with Redis's data, or taken over: say again what this machine
            # is, with the next pop, since its metadata may be gone too; the worker brings it back.
            log.info("heartbeat re-established (it had %s)", "expired" if previous is None else "another holder")
            if info is None:  # else it went ahead of this beat, into the same Redis
                self._announced = None
        return decode_envelopes(popped[1] if popped else (), self.machine_id)

    async def _close_idle_connections(self, now: float) -> None:
        """An idle agent keeps only the mailbox connection: the job connection closes after a while."""
        if self._jobs:
            self._idle_since = 0.0
            return
        if not self._idle_since:
            self._idle_since = now
        elif now - self._idle_since > 2 * self.settings.heartbeat_interval_s:
            await drop_idle_connections(self.redis)
            self._idle_since = now

    async def _handle(self, job: Envelope) -> None:
        async with self._slots:
            try:
                if job.kind in CLAIMED_KINDS:
                    await self.claims.run(job)
                else:
                    state, result = await self.executor.run(job)
                    answer = Answer(origin=job.reply_to, joined=(), secret=job.secret)
                    await until_done(
                        lambda: self.queue.reply(self.machine_id, job.job_id, state, result, answer),
                        f"answering job {job.job_id}",
                        stopping=self.should_exit,
                        reconnect_max_s=self.settings.reconnect_max_s,
                        within_s=self.settings.paths_timeout_s,  # the asking hub waits no longer
                    )
            except TRANSIENT as exc:
                log.warning("job %s: Redis failed: %s", job.job_id, exc)

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
