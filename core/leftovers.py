"""What a machine that left behind, settled once it is gone: the envelopes still in its mailbox
(a read-only job's caller hears at once; a recorded job fails) and the recent jobs its gone
instance had taken (failed or unknown). Every change is core.machine_scripts.ORPHAN's
compare-and-set through core.queue, so two workers, or a pass run twice, settle each job once.
"""

from __future__ import annotations

from typing import Any

import msgspec
from redis.asyncio import Redis

from core.keys import Keys, valid_hub_id, valid_job_id
from core.queue import JobQueue
from core.schemas import CLAIMED_KINDS, Envelope, JobState, PathsResult, Reply, SpawnResult

OFFLINE_CODE = "machine_offline"
_encoder = msgspec.json.Encoder()


def offline_result(machine_id: str) -> bytes:
    """The failed result of a job whose machine went offline (reads as a spawn or stop result)."""
    return _encoder.encode(SpawnResult(success=False, error=f"Machine {machine_id} went offline", code=OFFLINE_CODE))


async def redis_now_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Leftovers:
    """Settles what machines left; `window_ms` bounds how far back a machine's jobs can still be open."""

    def __init__(self, redis: Redis, keys: Keys, queue: JobQueue, *, window_ms: int) -> None:
        self.redis = redis
        self.keys = keys
        self.queue = queue
        self.window_ms = window_ms

    async def drain(self, ns: str, machine_id: str) -> int:
        """Answer every envelope left in the mailbox of a machine without a heartbeat."""
        envelopes = await self.queue.drain(ns, machine_id)
        settled, back = 0, []
        result = offline_result(machine_id)
        for envelope in envelopes:
            if envelope.kind in CLAIMED_KINDS:
                if not valid_job_id(envelope.job_id, machine_id):
                    continue
                status = await self.queue.orphan(ns, machine_id, envelope.job_id, result)
                settled += status == "failed"
                if status == "alive":
                    back.append(envelope)
            else:
                await self._answer_read(machine_id, envelope)
        if back:
            # The agent pops from the right, oldest first: put them back in the order they had.
            await self.redis.rpush(self.keys.mailbox(ns, machine_id), *(_encoder.encode(e) for e in back))
        return settled

    async def _answer_read(self, machine_id: str, envelope: Envelope) -> None:
        """A read-only job's caller hears at once that the machine went offline."""
        if not valid_hub_id(envelope.reply_to):
            return
        error = f"Machine {machine_id} went offline"
        reply = Reply(
            job_id=envelope.job_id,
            machine_id=machine_id,
            state=JobState.FAILED,
            result=msgspec.Raw(_encoder.encode(PathsResult(error=error, code=OFFLINE_CODE))),
            secret=envelope.secret,
            origin=True,
        )
        await self.redis.lpush(self.keys.inbox(envelope.reply_to), _encoder.encode(reply))

    async def settle_recent(self, ns: str, machine_id: str) -> int:
        """Settle this machine's recent recorded jobs that its gone instance left (core.machine_scripts.ORPHAN)."""
        return await self.settle_recent_many(ns, [machine_id], await redis_now_ms(self.redis))

    async def settle_recent_many(self, ns: str, machine_ids: list[str], now_ms: int) -> int:
        """`settle_recent` for machines of one namespace, reading its recent jobs once for all."""
        by_machine: dict[str, list[str]] = {}  # a job id starts with its machine's id
        for raw in await self.redis.zrangebyscore(self.keys.jobs(ns), now_ms - self.window_ms, "+inf"):
            job_id = _s(raw)
            by_machine.setdefault(job_id.rpartition(".")[0], []).append(job_id)
        settled = 0
        for machine_id in machine_ids:
            result = offline_result(machine_id)
            for job_id in by_machine.get(machine_id, ()):
                if valid_job_id(job_id, machine_id):
                    settled += await self.queue.orphan(ns, machine_id, job_id, result) in ("failed", "unknown")
        return settled
