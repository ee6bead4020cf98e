"""The background worker's sweeps: plain functions over Redis, run by worker/ on a schedule.

Every transition a sweep makes is a compare-and-set script (core.scripts) that re-checks what
the sweep saw, so a sweep run twice, or by two workers at once, acts once: one state change, one
event, one reply. Each function returns what it changed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from redis.asyncio import Redis

from core import scripts
from core.events import EventLog, JobEvent, MachineEvent
from core.keys import Keys
from core.names import valid_namespace
from core.queue import JobQueue
from core.registry import Registry
from core.schemas import Envelope, JobState, PathsResult, SpawnResult
from core.settings import Settings

log = logging.getLogger(__name__)
_envelope_decoder = msgspec.json.Decoder(Envelope)
_encoder = msgspec.json.Encoder()
OFFLINE_CODE = "machine_offline"


@dataclass(frozen=True, slots=True)
class MachineSweep:
    offline: int = 0  # machines this sweep marked offline
    online: int = 0  # machines this sweep marked online
    failed: int = 0  # queued jobs of offline machines this sweep failed


@dataclass(frozen=True, slots=True)
class Trimmed:
    jobs: int = 0  # job ids removed from history sets
    events: int = 0  # events removed from namespace streams


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


async def namespaces(redis: Redis, keys: Keys) -> list[str]:
    """Every namespace that has a machine set, found with SCAN (never KEYS)."""
    head, tail = keys.machines("\0").split("\0")
    found = set()
    async for key in redis.scan_iter(match=f"{_glob_escape(head)}*{_glob_escape(tail)}", count=1000):
        ns = _s(key)[len(head) : -len(tail)]
        if valid_namespace(ns):
            found.add(ns)
    return sorted(found)


async def _machines(redis: Redis, keys: Keys) -> AsyncIterator[tuple[str, str]]:
    for ns in await namespaces(redis, keys):
        async for machine_id in redis.sscan_iter(keys.machines(ns), count=1000):
            yield ns, _s(machine_id)


def _offline_results(machine_id: str) -> tuple[bytes, bytes]:
    """The failed result of a queued job whose machine went offline: (spawn/stop, read-only)."""
    error = f"Machine {machine_id} went offline"
    claimed = _encoder.encode(SpawnResult(success=False, error=error, code=OFFLINE_CODE))
    read_only = _encoder.encode(PathsResult(error=error, code=OFFLINE_CODE))
    return claimed, read_only


async def _redis_now_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def fail_queued_jobs(redis: Redis, keys: Keys, settings: Settings, ns: str, machine_id: str) -> int:
    """End the still-queued jobs of a machine without a heartbeat; returns how many it failed.

    Candidates are the envelopes on its mailbox (taken off it) and the jobs it was given recently
    (an agent paused inside a blocking pop already holds its envelopes). Each is failed only while
    still queued and the machine still has no heartbeat; envelopes of jobs that were not failed
    because the machine came back go back onto its mailbox.
    """
    drained = await redis.register_script(scripts.DRAIN)(
        keys=[keys.mailbox(ns, machine_id), keys.heartbeat(ns, machine_id)]
    )
    envelopes: dict[str, bytes] = {}
    for raw in drained or ():
        try:
            envelopes[_envelope_decoder.decode(raw).job_id] = raw
        except msgspec.DecodeError:
            log.error("dropped an unreadable mailbox entry of %s: %r", machine_id, raw[:200])
    # A queued job's hub waits at most until its deadline; older jobs are settled by their hub.
    window_ms = int(max(settings.spawn_timeout_s, settings.paths_timeout_s + settings.session_stop_grace_s) * 1000)
    since = await _redis_now_ms(redis) - window_ms - 1000
    recent = [_s(j) for j in await redis.zrangebyscore(keys.history(ns, machine_id), since, "+inf")]
    claimed_result, read_result = _offline_results(machine_id)
    queue = JobQueue(redis, keys, max_events=settings.max_events)
    failed = 0
    back: list[bytes] = []
    fail = redis.register_script(scripts.FAIL_QUEUED)
    for job_id in dict.fromkeys([*envelopes, *recent]):
        out = await fail(
            keys=[
                keys.job(ns, machine_id, job_id),
                keys.waiters(ns, machine_id, job_id),
                keys.stats(ns, machine_id),
                keys.heartbeat(ns, machine_id),
            ],
            args=[claimed_result, read_result],
        )
        status = _s(out[0])
        if status == "alive" and job_id in envelopes:
            back.append(envelopes[job_id])
        if status != "done":
            continue
        failed += 1
        kind, result = _s(out[1]), bytes(out[2])
        event = JobEvent(job_id=job_id, machine_id=machine_id, kind=kind, state=JobState.FAILED, code=OFFLINE_CODE)
        await queue.notify(ns, [_s(x) for x in out[3:]], event, result)
    if back:
        # The agent pops from the right, oldest first: put them back in the order they had.
        await redis.rpush(keys.mailbox(ns, machine_id), *back)
    return failed


async def sweep_machines(redis: Redis, keys: Keys, settings: Settings) -> MachineSweep:
    """Mark machines without a heartbeat offline (and fail their queued jobs), and the reverse."""
    registry = Registry(redis, keys)
    offline = online = failed = 0
    async for ns, machine_id in _machines(redis, keys):
        async with redis.pipeline(transaction=False) as pipe:
            pipe.exists(keys.heartbeat(ns, machine_id))
            pipe.hget(keys.info(ns, machine_id), "state")
            beating, state = await pipe.execute()
        state = _s(state) if state is not None else None
        if not beating:
            if state != "offline" and await _set_state(registry, ns, machine_id, "offline"):
                offline += 1
            failed += await fail_queued_jobs(redis, keys, settings, ns, machine_id)
        elif state != "online" and await _set_state(registry, ns, machine_id, "online"):
            online += 1
    return MachineSweep(offline, online, failed)


async def _set_state(registry: Registry, ns: str, machine_id: str, state: Literal["online", "offline"]) -> bool:
    """Registry.set_state, but only while the heartbeat agrees (see scripts.SWEEP_STATE)."""
    keys = registry.keys
    script = registry.redis.register_script(scripts.SWEEP_STATE)
    changed = await script(keys=[keys.info(ns, machine_id), keys.heartbeat(ns, machine_id)], args=[state])
    if not changed:
        return False
    log.info("machine %s in namespace %s is %s", machine_id, ns, state)
    await registry.events.publish(registry.redis, ns, MachineEvent(machine_id=machine_id, state=state))
    return True


async def sweep_jobs(redis: Redis, keys: Keys, settings: Settings) -> int:
    """Mark running jobs unknown whose claiming agent instance no longer holds the heartbeat.

    A restarted agent's recovery may still finish them (scripts.RECOVER accepts unknown). Returns
    how many jobs this sweep changed.
    """
    events = EventLog(keys, max_events=settings.max_events)
    lose = redis.register_script(scripts.LOSE_RUNNING)
    lost = 0
    async for ns, machine_id in _machines(redis, keys):
        running = [_s(j) for j in await redis.smembers(keys.running(ns, machine_id))]
        if not running:
            continue
        live = await redis.hget(keys.heartbeat(ns, machine_id), "instance")
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in running:
                pipe.hget(keys.job(ns, machine_id, job_id), "claimedBy")
            claimed_by = await pipe.execute()
        for job_id, instance in zip(running, claimed_by, strict=True):
            if instance is not None and live is not None and _s(instance) == _s(live):
                continue
            out = await lose(
                keys=[
                    keys.job(ns, machine_id, job_id),
                    keys.running(ns, machine_id),
                    keys.stats(ns, machine_id),
                    keys.heartbeat(ns, machine_id),
                ],
                args=[job_id, _s(instance) if instance is not None else ""],
            )
            if _s(out[0]) != "unknown":
                continue
            lost += 1
            log.info("job %s of machine %s: its agent instance is gone; outcome unknown", job_id, machine_id)
            event = JobEvent(job_id=job_id, machine_id=machine_id, kind=_s(out[1]), state=JobState.UNKNOWN)
            await events.publish(redis, ns, event)
    return lost


async def trim_history(redis: Redis, keys: Keys, settings: Settings) -> Trimmed:
    """Drop job ids and namespace events older than `job_retention_s` (Redis clock)."""
    cutoff_ms = await _redis_now_ms(redis) - int(settings.job_retention_s * 1000)
    jobs = events = 0
    for ns in await namespaces(redis, keys):
        async for machine_id in redis.sscan_iter(keys.machines(ns), count=1000):
            jobs += await redis.zremrangebyscore(keys.history(ns, _s(machine_id)), "-inf", f"({cutoff_ms}")
        events += await redis.xtrim(keys.events(ns), minid=f"{max(cutoff_ms, 0)}-0", approximate=False)
    return Trimmed(jobs, events)
