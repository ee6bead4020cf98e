"""Recent jobs of a namespace, newest first, for listings: read-only.

Hubs add every recorded job (spawn, stop) to the namespace's job index, a ZSET scored by creation
time (Redis clock, ms); the worker trims it to the retention. A listing walks the index from a
cursor and reads the records of what it walks, at most `SCAN_FACTOR` entries per job it may
return, so a request costs O(its page) however large the namespace. A filtered page can therefore
come back short, with a cursor to walk on.

A machine's recent spawn directories are derived from the same index and the records' `args`,
so a spawn pays nothing for them; they live as long as the job records do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.asyncio import Redis

from core.keys import Keys
from core.names import job_machine
from core.schemas import JobKind, JobRecord, JobState

SCAN_FACTOR = 10
MIN_SCAN = 200
RECENT_SPAWNS = 200  # the newest successful spawns of a machine its recent directories come from
_decoder = msgspec.json.Decoder(JobRecord)


class _SpawnArgs(msgspec.Struct):
    directory: str = ""


_args_decoder = msgspec.json.Decoder(_SpawnArgs)


def _succeeded_spawn(record: JobRecord) -> bool:
    return record.kind == JobKind.SPAWN and record.state == JobState.SUCCEEDED


@dataclass(frozen=True, slots=True)
class HistoryItem:
    created_ms: int
    job_id: str
    machine_id: str
    record: JobRecord


@dataclass(frozen=True, slots=True)
class HistoryPage:
    items: list[HistoryItem]
    next_position: tuple[int, str] | None  # where the next page starts walking, if more may follow


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class JobHistory:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def recent(
        self,
        ns: str,
        *,
        before: tuple[int, str] | None = None,
        limit: int = 50,
        machine_id: str | None = None,
        match: Callable[[JobRecord], bool] = lambda record: True,
    ) -> HistoryPage:
        """Up to `limit` jobs strictly after `before` (newest first) that `match` accepts."""
        k = self.keys
        top = "+inf" if before is None else str(before[0])
        budget = max(limit * SCAN_FACTOR, MIN_SCAN)
        batch = min(budget, limit + 1 if machine_id is None else 2 * limit + 1)
        items: list[HistoryItem] = []
        offset = 0
        last: tuple[int, str] | None = None
        while offset < budget:
            rows = await self.redis.zrevrangebyscore(k.jobs(ns), top, "-inf", start=offset, num=batch, withscores=True)
            offset += len(rows)
            entries = [(int(score), _s(member)) for member, score in rows]
            if before is not None:  # ties at the cursor's millisecond were on earlier pages
                entries = [e for e in entries if e < before]
            owners = {job_id: job_machine(job_id) for _, job_id in entries}
            wanted = [j for j, m in owners.items() if m is not None and machine_id in (None, m)]
            records = await self._records(ns, [(j, owners[j] or "") for j in wanted])
            for score, job_id in entries:
                record = records.get(job_id)
                if record is not None and match(record):
                    if len(items) == limit:
                        return HistoryPage(items, last)
                    items.append(HistoryItem(score, job_id, owners[job_id] or "", record))
                last = (score, job_id)
            if len(rows) < batch:
                return HistoryPage(items, None)
        return HistoryPage(items, last)

    async def recent_directories(self, ns: str, machine_id: str, *, limit: int = 20) -> list[tuple[str, int]]:
        """(directory as asked, when it was last spawned in) of the machine's newest successful
        spawns, newest first, each directory once."""
        page = await self.recent(ns, limit=RECENT_SPAWNS, machine_id=machine_id, match=_succeeded_spawn)
        found: dict[str, int] = {}
        for item in page.items:
            try:
                directory = _args_decoder.decode(item.record.args).directory
            except msgspec.DecodeError:
                continue
            if directory and directory not in found:
                found[directory] = item.record.created_ms or item.created_ms
                if len(found) == limit:
                    break
        return list(found.items())

    async def _records(self, ns: str, jobs: list[tuple[str, str]]) -> dict[str, JobRecord]:
        """The readable records of (job id, machine id) pairs; one pipeline (jobs span slots)."""
        if not jobs:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id, machine_id in jobs:
                pipe.get(self.keys.job(ns, machine_id, job_id))
            raws = await pipe.execute()
        out: dict[str, JobRecord] = {}
        for (job_id, _), raw in zip(jobs, raws, strict=True):
            if raw is not None:
                try:
                    out[job_id] = _decoder.decode(raw)
                except msgspec.DecodeError:
                    continue
        return out
