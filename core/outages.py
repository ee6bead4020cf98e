"""How long the worker and the hubs hold back "offline" after they lost Redis.

A heartbeat key lives `heartbeat_ttl_s`. When Redis was unreachable (down, hung, failing over to a
replica that lacks the last beats), every machine's heartbeat may expire before its agent could
write the next one, and the sweep would mark a live fleet offline, fail what waits in its
mailboxes and fire machine.offline everywhere. So after the worker saw Redis fail, it marks no
machine offline for one heartbeat TTL from the moment Redis answered again: every agent beats
at least once in that time if it is alive. Machines that come online are marked at once. A hub
likewise answers 503 rather than "offline" for a machine without a heartbeat in that time.
"""

from __future__ import annotations

import math
import time


class OutageGrace:
    """Shared by the worker's sweeps and its notification listener, across arq restarts; in a hub,
    by its requests and its reply reader."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._failing = False
        self._until = 0.0  # monotonic time before which no machine is marked offline
        self._failed_at = -math.inf

    def failed(self) -> None:
        """Redis failed a command: offline marks wait until it answers again, and one TTL more."""
        self._failing = True
        self._failed_at = time.monotonic()

    def failed_since(self, moment: float) -> bool:
        """Whether Redis failed at or after `moment` (time.monotonic()): what was sent to it or
        through it since may have been lost."""
        return self._failed_at >= moment

    def answered(self) -> None:
        """Redis answered: if it had failed, the grace runs from now."""
        if self._failing:
            self._failing = False
            self._until = time.monotonic() + self.ttl_s

    def remaining_s(self) -> float:
        """How long offline marks still wait (the TTL itself while Redis is still failing)."""
        if self._failing:
            return self.ttl_s
        return max(0.0, self._until - time.monotonic())
