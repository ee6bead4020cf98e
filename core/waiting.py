"""Spawns waiting for their machine (`waitForMachineS`): the worker settles what no hub waits for.

A hub answers such a spawn with 202 at once, so no hub publishes its outcome. The worker looks at
each waiting job on a schedule (a ZSET `<ns>:<job id>` -> next look, Redis clock): it expires a
job still queued at the end of its wait, gives up a claimed one at its run deadline (`unknown`),
and publishes the one final event of each (core.scripts.WAITING marks it published, so a second
look, or a second worker, publishes nothing). A queued job is looked at again every
`sweep_interval_s` while its machine beats (it is about to be claimed) and every
`offline_recheck_s` while it does not; when the sweep finds the machine come online it looks at
the machine's waiting jobs at once (`wake`), so an outcome is announced within about
`sweep_interval_s` of the job's end. A look costs one script call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.asyncio import Redis

from core.events import JobEvent
from core.keys import Keys, parse_waiting_member, waiting_member
from core.lua import Scripts
from core.queue import JobQueue
from core.schemas import SpawnResult
from core.settings import Settings

log = logging.getLogger(__name__)
BATCH = 1000
_result = msgspec.json.Decoder(SpawnResult)


@dataclass(slots=True)
class WaitingResult:
    looked: int = 0
    ended: int = 0  # jobs whose outcome this pass published


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _code(result: str) -> str:
    try:
        return _result.decode(result).code or "" if result else ""
    except msgspec.DecodeError:
        return ""


class WaitingJobs:
    """The worker's side of waiting spawns, for one key prefix on one Redis client."""

    def __init__(self, redis: Redis, keys: Keys, scripts: Scripts, queue: JobQueue, settings: Settings) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts
        self.queue = queue
        self.online_recheck_ms = int(settings.sweep_interval_s * 1000)
        self.offline_recheck_ms = int(settings.offline_recheck_s * 1000)

    async def settle(self, now_ms: int) -> WaitingResult:
        """Look at every waiting job that is due (at most BATCH per call)."""
        result = WaitingResult()
        due = self.keys.waiting_due()
        members = await self.redis.zrangebyscore(due, "-inf", now_ms, start=0, num=BATCH)
        later: dict[str, int] = {}
        done: list[str] = []
        settled: list[tuple[str, str, str]] = []
        for raw in members:
            member = _s(raw)
            result.looked += 1
            parsed = parse_waiting_member(member)
            if parsed is None:
                done.append(member)
                continue
            next_ms = await self._look(*parsed, now_ms, result)
            if next_ms is None:
                done.append(member)
                settled.append(parsed)
            else:
                later[member] = next_ms
        async with self.redis.pipeline(transaction=False) as pipe:
            if later:
                pipe.zadd(due, later)
            if done:
                pipe.zrem(due, *done)
            for ns, machine_id, job_id in settled:
                pipe.srem(self.keys.waiting(ns, machine_id), job_id)
            await pipe.execute()
        return result

    async def wake(self, machines: list[tuple[str, str]], now_ms: int) -> None:
        """These machines came online: look at their waiting jobs at once (then while they run), so
        their outcome is announced soon after they end, not at their next offline recheck."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for ns, machine_id in machines:
                pipe.smembers(self.keys.waiting(ns, machine_id))
            found = await pipe.execute()
        members = {
            waiting_member(ns, _s(job_id)): now_ms
            for (ns, _), job_ids in zip(machines, found, strict=True)
            for job_id in job_ids
        }
        if members:
            await self.redis.zadd(self.keys.waiting_due(), members, xx=True)

    async def _look(self, ns: str, machine_id: str, job_id: str, now_ms: int, result: WaitingResult) -> int | None:
        """When to look at the job again, or None when it is settled (or gone)."""
        k = self.keys
        out = await self.scripts.run("WAITING", [k.job(ns, machine_id, job_id), k.heartbeat(ns, machine_id)], [])
        status = _s(out[0])
        if status == "queued":
            claim_by, beating = int(out[1]), int(out[2]) == 1
            recheck = self.online_recheck_ms if beating else self.offline_recheck_ms
            return min(claim_by + 1, now_ms + recheck)
        if status == "running":
            return min(int(out[1]) + 1, now_ms + self.online_recheck_ms)
        if status == "ended":
            state, kind = _s(out[1]), _s(out[3])
            log.info("waiting job %s of machine %s in namespace %s ended %s", job_id, machine_id, ns, state)
            event = JobEvent(job_id=job_id, machine_id=machine_id, kind=kind, state=state)
            await self.queue.publish_final(ns, event, code=_code(_s(out[2])))
            result.ended += 1
        return None
