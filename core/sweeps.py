"""The background worker's sweeps: machines going offline and coming back, and what they left.

No key is ever scanned. The worker keeps two schedules (ZSETs of `<ns>:<machine>`): `online`
machines are looked at when their heartbeat would expire (its remaining TTL when last seen), so
a live machine costs one PTTL per heartbeat TTL; `offline` ones every `offline_recheck_s`. Keyspace
notifications of heartbeat keys (created, deleted) make both changes immediate when Redis sends
them (core.notifications); the schedules alone still find every change. A pass holds a lock, so
passes never overlap, and every change is a compare-and-set (core.queue, core.registry), so two
workers, or a pass run twice, change each thing once.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from core.connections import REDIS_FAILURES
from core.keys import Keys, due_member, parse_due_member
from core.leftovers import Leftovers, redis_now_ms
from core.lua import Scripts
from core.outages import OutageGrace
from core.queue import JobQueue
from core.registry import Registry
from core.settings import Settings
from core.transitions import Transitions
from core.waiting import WaitingJobs

log = logging.getLogger(__name__)
BATCH = 1000
_encoder = msgspec.json.Encoder()


@dataclass(slots=True)
class SweepResult:
    checked: int = 0
    offline: int = 0  # machines this sweep marked offline
    online: int = 0  # machines this sweep marked online
    settled: int = 0  # jobs of gone machines or instances it settled (failed or unknown)
    locked: bool = False  # another pass held the lock: this one did nothing
    waiting_ended: int = 0  # waiting spawns whose outcome it published (core.waiting)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Sweeper:
    def __init__(self, redis: Redis, keys: Keys, settings: Settings, grace: OutageGrace | None = None) -> None:
        self.redis = redis
        self.grace = grace or OutageGrace(settings.heartbeat_ttl_s)
        self.lock_token = uuid.uuid4().hex  # this sweeper's, so it knows its own lock again
        self._sweeping = False
        self.keys = keys
        self.settings = settings
        self.scripts = Scripts(redis, can_load=True)
        self.queue = JobQueue(redis, keys, self.scripts, max_events=settings.max_events)
        self.registry = Registry(redis, keys, self.scripts, max_events=settings.max_events)
        self.waiting = WaitingJobs(redis, keys, self.scripts, self.queue, settings)
        self.recheck_ms = int(settings.offline_recheck_s * 1000)
        # Jobs still queued or running were made at most this long ago: their hub gives up then.
        timeouts = (settings.spawn_timeout_s, settings.paths_timeout_s + settings.session_stop_grace_s)
        self.leftovers = Leftovers(redis, keys, self.queue, window_ms=int(max(timeouts) * 1000) + 1000)
        self.transitions = Transitions(self.registry, self.leftovers, self.waiting)

    async def sweep(self) -> SweepResult:
        """One pass over the machines that are due, under the sweep lock."""
        lock_ms = int(max(60.0, self.settings.sweep_interval_s * 4) * 1000)
        if self._sweeping:  # a pass of this sweeper runs: its token would let a second one in
            return SweepResult(locked=True)
        self._sweeping = True
        try:
            return await self._locked_sweep(lock_ms)
        finally:
            self._sweeping = False

    async def _locked_sweep(self, lock_ms: int) -> SweepResult:
        try:
            locked = await self.registry.lock_sweep(lock_ms, self.lock_token)
        except REDIS_FAILURES:
            self.grace.failed()
            raise
        self.grace.answered()
        if not locked:
            return SweepResult(locked=True)
        try:
            await self.scripts.ensure()  # Redis may have restarted: machines cannot load scripts
            result = SweepResult()
            while await self._pass(result) == BATCH:
                pass
            result.waiting_ended = (await self.waiting.settle(await redis_now_ms(self.redis))).ended
            return result
        except REDIS_FAILURES:
            # In a Cluster the lock's node may answer while the node of some heartbeats is down.
            self.grace.failed()
            raise
        finally:
            await self.registry.unlock_sweep(self.lock_token)

    async def _pass(self, result: SweepResult) -> int:
        now = await redis_now_ms(self.redis)
        k = self.keys
        due: list[tuple[str, str, str, int]] = []
        for state in ("online", "offline"):
            rows = await self.redis.zrangebyscore(k.sweep_due(state), "-inf", now, start=0, num=BATCH, withscores=True)
            for member, score in rows:
                parsed = parse_due_member(_s(member))
                if parsed is None:
                    await self.redis.zrem(k.sweep_due(state), member)
                    continue
                due.append((state, *parsed, int(score)))
        if not due:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for state, ns, machine_id, _score in due:
                pipe.pttl(k.heartbeat(ns, machine_id))
                if state == "offline":  # looked at rarely: is it still registered, and marked offline?
                    pipe.hmget(k.reg(ns, machine_id), "addedMs", "state")
            replies = iter(await pipe.execute())
        looks = [(entry, int(next(replies)), next(replies) if entry[0] == "offline" else None) for entry in due]
        later: dict[str, dict[str, int]] = {"online": {}, "offline": {}}
        forget: list[str] = []
        arrived: list[tuple[str, str]] = []  # found beating while scheduled as offline: marked together
        for (state, ns, machine_id, score), pttl, reg in looks:
            result.checked += 1
            try:
                await self._look(state, ns, machine_id, score, pttl, reg, now, result, later, forget, arrived)
            except ResponseError as exc:
                self._unreadable(ns, machine_id, exc, now, later)
        for (ns, machine_id), status in zip(arrived, await self.transitions.came_online(arrived, now), strict=True):
            if isinstance(status, ResponseError):
                self._unreadable(ns, machine_id, status, now, later)
            elif isinstance(status, Exception):
                raise status
            result.online += status == 1
        if forget:
            await self.redis.zrem(k.sweep_due("online"), *forget)
            await self.redis.zrem(k.sweep_due("offline"), *forget)
        await self._schedule(later)
        return len(due)

    async def _look(
        self,
        state: str,
        ns: str,
        machine_id: str,
        score: int,
        pttl: int,
        reg: list[bytes | None] | None,
        now: int,
        result: SweepResult,
        later: dict[str, dict[str, int]],
        forget: list[str],
        arrived: list[tuple[str, str]],
    ) -> None:
        """What one due machine's look found, and when to look at it next."""
        member = due_member(ns, machine_id)
        added, marked = reg if reg is not None else (b"", b"online")
        if added is None:
            forget.append(member)  # removed (or lost with Redis's data, and not beating)
            return
        if pttl > 0:
            later["online"][member] = now + pttl  # when this heartbeat would expire
            if state == "offline":
                arrived.append((ns, machine_id))
            return
        # A machine never seen online is not marked offline: it was never anything else.
        if (state == "online" or marked == b"online") and (wait_s := self.grace.remaining_s()) > 0:
            later["online"][member] = now + int(wait_s * 1000) + 1  # Redis just came back: let it beat
            return
        later["offline"][member] = now + self.recheck_ms
        if state == "online" or marked == b"online":
            # Found gone at the expiry of the last heartbeat seen: that beat was the last one.
            last_seen = score - int(self.settings.heartbeat_ttl_s * 1000) if state == "online" else None
            status, settled = await self.transitions.went_offline(ns, machine_id, last_seen_ms=last_seen)
            result.offline += status == 1
            result.settled += settled
            if status == -1:
                del later["offline"][member]
                forget.append(member)

    def _unreadable(self, ns: str, machine_id: str, exc: Exception, now: int, later: dict[str, dict[str, int]]) -> None:
        # A machine's user can give its own keys the wrong type: that machine waits, no other.
        log.error("machine %s in namespace %s: %s; looking again later", machine_id, ns, exc)
        later["online"].pop(due_member(ns, machine_id), None)
        later["offline"][due_member(ns, machine_id)] = now + self.recheck_ms

    async def check(self, ns: str, machine_id: str) -> None:
        """Look at one machine now (a keyspace notification said its heartbeat changed)."""
        await self.check_many([(ns, machine_id)])

    async def check_many(self, machines: list[tuple[str, str]]) -> None:
        """Look at these machines now, those beating together (core.notifications batches them)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.execute_command("TIME")  # not pipe.time(): a cluster pipeline refuses it by name
            for ns, machine_id in machines:
                pipe.pttl(self.keys.heartbeat(ns, machine_id))
            (seconds, micros), *pttls = await pipe.execute()
        now = int(seconds) * 1000 + int(micros) // 1000
        later: dict[str, dict[str, int]] = {"online": {}, "offline": {}}
        beating = [(m, int(pttl)) for m, pttl in zip(machines, pttls, strict=True) if int(pttl) > 0]
        statuses = await self.transitions.came_online([m for m, _ in beating], now)
        for ((ns, machine_id), pttl), status in zip(beating, statuses, strict=True):
            if isinstance(status, ResponseError):
                self._unreadable(ns, machine_id, status, now, later)
            elif isinstance(status, Exception):
                raise status
            elif status in (0, 1):  # registered (-1: not, and not restored)
                later["online"][due_member(ns, machine_id)] = now + pttl
        if self.grace.remaining_s() == 0:  # else their schedules look after the grace
            for (ns, machine_id), pttl in zip(machines, pttls, strict=True):
                if int(pttl) != -2:
                    continue
                try:
                    status, _ = await self.transitions.went_offline(ns, machine_id, last_seen_ms=now)
                except ResponseError as exc:
                    self._unreadable(ns, machine_id, exc, now, later)
                    continue
                if status != -1:
                    later["offline"][due_member(ns, machine_id)] = now + self.recheck_ms
        await self._schedule(later)

    async def _schedule(self, later: dict[str, dict[str, int]]) -> None:
        """Next looks, each in the schedule of the state the machine was found in (and out of the other)."""
        if not (later["online"] or later["offline"]):
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for state, other in (("online", "offline"), ("offline", "online")):
                if later[state]:
                    pipe.zadd(self.keys.sweep_due(state), later[state])
                    pipe.zrem(self.keys.sweep_due(other), *later[state])
            await pipe.execute()

    async def trim(self) -> tuple[int, int]:
        """Drop job index entries and events older than `job_retention_s` (Redis clock)."""
        cutoff_ms = await redis_now_ms(self.redis) - int(self.settings.job_retention_s * 1000)
        jobs = events = 0
        for raw in await self.redis.smembers(self.keys.namespaces()):
            ns = _s(raw)
            jobs += await self.redis.zremrangebyscore(self.keys.jobs(ns), "-inf", f"({cutoff_ms}")
            events += await self.redis.xtrim(self.keys.events(ns), minid=f"{max(cutoff_ms, 0)}-0", approximate=False)
        return jobs, events
