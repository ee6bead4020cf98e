"""Recent jobs of a namespace: the machines' job histories merged, newest first, for listings.

Read-only: nothing here writes. Each machine keeps the ids of its last jobs in a ZSET scored by
creation time (the enqueue script maintains it); a listing merges those and reads the records.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from core.keys import Keys

JOB_FIELDS = ("kind", "state", "createdMs", "claimedMs", "finishedMs", "result")


@dataclass(frozen=True, slots=True)
class HistoryItem:
    """A job of a listing: its history position (created ms, id), machine and stored fields."""

    created_ms: int
    job_id: str
    machine_id: str
    record: dict[str, bytes]

    @property
    def position(self) -> tuple[int, str]:
        return self.created_ms, self.job_id


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class JobHistory:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def recent(
        self,
        ns: str,
        machine_ids: Sequence[str],
        *,
        before: tuple[int, str] | None = None,
        limit: int = 50,
        match: Callable[[dict[str, bytes]], bool] = lambda record: True,
        batch: int = 100,
    ) -> tuple[list[HistoryItem], bool]:
        """Up to `limit` jobs of these machines, newest first, strictly after `before`.

        Merges the machines' history ZSETs (ordered by created ms, then job id, both descending)
        a batch at a time, reads the records in one pipeline per round, skips records that are
        gone (expired) or that `match` rejects. Returns the items and whether more may follow.
        Read-only: nothing is written.
        """
        k = self.keys
        top = "+inf" if before is None else str(before[0])
        offsets = {m: 0 for m in machine_ids}
        buffers: dict[str, list[tuple[int, str]]] = {m: [] for m in machine_ids}
        exhausted: set[str] = set()
        out: list[HistoryItem] = []
        while len(out) <= limit:
            refill = [m for m in machine_ids if not buffers[m] and m not in exhausted]
            if refill:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for m in refill:
                        pipe.zrevrangebyscore(
                            k.history(ns, m), top, "-inf", start=offsets[m], num=batch, withscores=True
                        )
                    fetched = await pipe.execute()
                for m, rows in zip(refill, fetched, strict=True):
                    offsets[m] += len(rows)
                    if len(rows) < batch:
                        exhausted.add(m)
                    entries = [(int(score), _s(member)) for member, score in rows]
                    # Entries at or before the cursor (same ms, id not below it) were on earlier pages;
                    # a batch of only those leaves the buffer empty, and the next round reads on.
                    buffers[m] = [e for e in entries if before is None or e < before]
            live = [m for m in machine_ids if buffers[m]]
            if not live:
                if all(m in exhausted for m in machine_ids):
                    break
                continue
            # Entries at or above every unfinished machine's last fetched entry come before
            # anything not fetched yet, so they can be taken in order now.
            pending = [buffers[m][-1] for m in machine_ids if m not in exhausted and buffers[m]]
            floor = max(pending) if pending else min(buffers[m][-1] for m in live)
            if any(not buffers[m] and m not in exhausted for m in machine_ids):
                continue
            ready: list[tuple[int, str, str]] = []
            for m in live:
                take = [e for e in buffers[m] if e >= floor]
                buffers[m] = buffers[m][len(take) :]
                ready.extend((score, job_id, m) for score, job_id in take)
            ready.sort(reverse=True)
            async with self.redis.pipeline(transaction=False) as pipe:
                for _score, job_id, m in ready:
                    pipe.hmget(k.job(ns, m, job_id), *JOB_FIELDS)
                records = await pipe.execute()
            for (score, job_id, m), values in zip(ready, records, strict=True):
                record = {f: v for f, v in zip(JOB_FIELDS, values, strict=True) if v is not None}
                if "state" not in record or "kind" not in record or not match(record):
                    continue
                out.append(HistoryItem(score, job_id, m, record))
                if len(out) > limit:
                    break
        more = len(out) > limit
        return out[:limit], more
