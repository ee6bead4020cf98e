"""How the agent waits out Redis failures: with backoff, saying each new failure once, and telling
apart credentials Redis refuses (the machine was removed or rotated) from an outage.

A refused credential is logged once as what it most likely means; with `exit_if_removed` the agent
then stops with REMOVED_EXIT_STATUS instead of retrying (README, "Security model").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from redis.exceptions import NoPermissionError

from core.connections import REDIS_FAILURES, Backoff, refused_credentials
from core.errors import ScriptsNotLoaded
from core.settings import Settings

log = logging.getLogger("machine_agent.agent")

REMOVED_EXIT_STATUS = 3
# Failures a loop waits out and tries again: Redis gone or stalled, scripts not loaded yet.
TRANSIENT: tuple[type[Exception], ...] = (*REDIS_FAILURES, ScriptsNotLoaded)


class Retries:
    """The agent's failure log and backoff waits; `stopping` ends a wait early and is set on removal."""

    def __init__(self, settings: Settings, *, ns: str, machine_id: str, stopping: asyncio.Event) -> None:
        self.settings = settings
        self.ns = ns
        self.machine_id = machine_id
        self.stopping = stopping
        self.removed = False  # Redis refused our credentials and exit_if_removed asked us to stop
        self._refused = False  # whether the refusal of our credentials was already logged
        self._last_failure = ""

    def succeeded(self) -> None:
        self._refused, self._last_failure = False, ""

    async def failed(self, what: str, exc: BaseException, backoff: Backoff) -> None:
        """Log `exc` (once per new failure) and wait the next backoff, or until the agent stops."""
        if refused_credentials(exc) or isinstance(exc, NoPermissionError):
            if not self._refused:
                log.error(
                    "Redis refused this agent's access to machine %s in namespace %s (%s): the machine was "
                    "removed or its password rotated (machine-hub machine add/remove), or REDIS_URL belongs to "
                    "another machine; %s",
                    self.machine_id,
                    self.ns,
                    exc,
                    "exiting" if self.settings.exit_if_removed else "retrying with backoff",
                )
                self._refused = True
            if self.settings.exit_if_removed:
                self.removed = True
                self.stopping.set()
                return
        elif str(exc) != self._last_failure:
            log.warning("%s failed: %s; retrying with backoff", what, exc)
        else:
            log.debug("%s failed again: %s", what, exc)  # said once; the same again adds nothing
        self._last_failure = str(exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), backoff.next())

    async def until_stopped(self, step: Callable[[], Awaitable[None]], what: str) -> bool:
        """Run `step` until it succeeds (True), at least once: a job finishing while the agent
        stops still reports. False when it failed and the agent is stopping."""
        backoff = Backoff(self.settings.reconnect_max_s)
        while True:
            try:
                await step()
                self.succeeded()
                return True
            except TRANSIENT as exc:
                await self.failed(what, exc, backoff)
            if self.stopping.is_set():
                return False
