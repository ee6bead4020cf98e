"""A machine coming online or going offline, as the worker records it: the mark (one event, one
counter change), what its gone instance left (core.leftovers), its waiting spawns (core.waiting).

Machines come online in crowds (a fleet's cold start, everyone beating again after a Redis
restart): one per look, a dozen round trips each, one worker restored 100 to 130 machines a
second. `came_online` takes a batch in about ten round trips whatever its size. Every write is
the same compare-and-set a single machine's look makes, so two workers, or a batch looked at
twice, change each thing once.
"""

from __future__ import annotations

import logging

from core.leftovers import Leftovers
from core.registry import Registry
from core.waiting import WaitingJobs

log = logging.getLogger(__name__)


class Transitions:
    def __init__(self, registry: Registry, leftovers: Leftovers, waiting: WaitingJobs) -> None:
        self.registry = registry
        self.leftovers = leftovers
        self.waiting = waiting

    async def came_online(self, machines: list[tuple[str, str]], now: int) -> list[int | Exception]:
        """Mark them online (restoring registrations Redis lost) and settle jobs of gone
        instances, in a few round trips for all: each one's mark status (core.registry.mark)."""
        if not machines:
            return []
        statuses = await self.registry.mark_many(machines, "online")
        lost = [m for m, status in zip(machines, statuses, strict=True) if status == -1]
        if lost:
            restored = await self.restore_registrations(lost)
            again = dict(zip(restored, await self.registry.mark_many(restored, "online"), strict=True))
            statuses = [again.get(m, status) for m, status in zip(machines, statuses, strict=True)]
        arrived = [m for m, status in zip(machines, statuses, strict=True) if status == 1]
        by_namespace: dict[str, list[str]] = {}
        for ns, machine_id in arrived:
            log.info("machine %s in namespace %s is online", machine_id, ns)
            by_namespace.setdefault(ns, []).append(machine_id)
        for ns, machine_ids in by_namespace.items():
            await self.leftovers.settle_recent_many(ns, machine_ids, now)
        if arrived:
            await self.waiting.wake(arrived, now)
        return statuses

    async def went_offline(self, ns: str, machine_id: str, *, last_seen_ms: int | None) -> tuple[int, int]:
        """Mark it offline, fail what waits in its mailbox and settle what it left running.

        Returns the mark's status (core.registry.mark: 1 changed, 0 already offline, -1 not
        registered, 2 never online) and how many jobs were settled.
        """
        status = await self.registry.mark(ns, machine_id, "offline", last_seen_ms=last_seen_ms)
        if status == 1:
            log.info("machine %s in namespace %s is offline", machine_id, ns)
        settled = await self.leftovers.drain(ns, machine_id)
        if status in (1, 2):  # 2: gone before a sweep saw it online, perhaps with a job it took
            settled += await self.leftovers.settle_recent(ns, machine_id)
        return status, settled

    async def restore_registrations(self, machines: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Machines beat but Redis lost their registrations (restart without persistence): only
        each one's own user, or an admin, can have written its heartbeat, so each belongs to its
        namespace unless another namespace owns the id. Those restored."""
        restored = await self.registry.register_many(machines)
        done = set(restored)
        for ns, machine_id in machines:
            if (ns, machine_id) in done:
                log.warning("machine %s in namespace %s: registration restored (Redis had lost it)", machine_id, ns)
            else:
                log.warning(
                    "machine %s beats in namespace %s but its id belongs to another one; ignored", machine_id, ns
                )
        return restored
