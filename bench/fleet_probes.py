"""What bench/fleet.py reads while the fleet runs: Redis's own counters, the hub's answers and
their latency, the worker's sweep passes (its log), and the machine events of the namespace."""

from __future__ import annotations

import asyncio
import contextlib
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from redis.asyncio import Redis

from core.connections import REDIS_FAILURES
from core.events import MachineEvent, decode
from core.keys import Keys

SWEEP_LINE = re.compile(r"^\S+ \S+ INFO arq\.worker:\s+([\d.]+)s ← \S*:sweep\S* ● (.*)$")


async def commands(redis: Redis) -> dict[str, int]:
    """Calls per command since Redis started (INFO commandstats), scripts' own commands included."""
    stats = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def delta(after: dict[str, int], before: dict[str, int], skip: tuple[str, ...] = ("info",)) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in after.items() if k not in skip and n != before.get(k, 0)}


async def ping_p50_ms(redis: Redis, n: int) -> float:
    """Median of `n` PINGs in turn: how long Redis itself takes to answer while the fleet runs."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        await redis.ping()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


async def clients(redis: Redis) -> int:
    return int((await redis.info("clients"))["connected_clients"])


async def memory(redis: Redis) -> int:
    return int((await redis.info("memory"))["used_memory"])


async def heartbeats(redis: Redis) -> int:
    """Keys with a TTL (INFO keyspace `expires`): the live heartbeats, and a few job records; -1
    while Redis does not answer."""
    try:
        return int((await redis.info("keyspace")).get("db0", {}).get("expires", 0))
    except REDIS_FAILURES:
        return -1


class Hub:
    """An authenticated keep-alive client of one hub."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.http = httpx2.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def wait_ready(self, check: Callable[[], None], timeout_s: float = 60.0) -> None:
        """Until /readyz answers 200; `check` raises when a process exited."""
        for _ in range(int(timeout_s / 0.2)):
            check()
            with contextlib.suppress(httpx2.TransportError):
                if (await self.http.get("/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"the hub at {self.url} was not ready within {timeout_s:g} s")

    async def p50_ms(self, method: str, path: str, n: int, **kwargs: Any) -> float:
        """Median latency of `n` requests in turn, after one untimed; each must answer 200."""
        times = []
        for i in range(n + 1):
            t = time.perf_counter()
            response = await self.http.request(method, path, **kwargs)
            if response.status_code != 200:
                raise RuntimeError(f"{method} {path} answered {response.status_code}: {response.text[:300]}")
            if i:
                times.append(time.perf_counter() - t)
        return statistics.median(times) * 1000

    async def listed(self) -> int:
        """Machines GET /api/machines lists online now, every page of 1000 walked."""
        count, cursor = 0, None
        while True:
            params = {"limit": "1000"} | ({"cursor": cursor} if cursor else {})
            response = await self.http.get("/api/machines", params=params, timeout=10)
            if response.status_code != 200:
                return -1
            body = response.json()
            count += len(body["machines"])
            cursor = body.get("nextCursor")
            if not cursor:
                return count


async def offline_events(redis: Redis, keys: Keys, ns: str) -> set[str]:
    """Machines the namespace's event stream says went offline (the stream holds every event here)."""
    marked: set[str] = set()
    start = "-"
    while True:
        batch = await redis.xrange(keys.events(ns), min=start, max="+", count=5000)
        for _, fields in batch:
            event = decode(fields[b"e"])
            if isinstance(event, MachineEvent) and event.state == "offline":
                marked.add(event.machine_id)
        if len(batch) < 5000:
            return marked
        start = "(" + batch[-1][0].decode()


@dataclass
class Sweeps:
    """The worker's sweep passes as arq logs them: duration and what each found."""

    seconds: list[float] = field(default_factory=list)
    locked: int = 0

    @classmethod
    def read(cls, log: Path, start: int = 0) -> tuple[Sweeps, int]:
        """Passes logged after byte `start`; and where the log ends now."""
        found = cls()
        with log.open("rb") as f:
            f.seek(start)
            text = f.read()
        for line in text.decode(errors="replace").splitlines():
            match = SWEEP_LINE.match(line)
            if match is None:
                continue
            if "'locked': 1" in match.group(2):
                found.locked += 1
            else:
                found.seconds.append(float(match.group(1)))
        return found, start + len(text)

    def line(self) -> str:
        if not self.seconds:
            return "no pass logged"
        return (
            f"{statistics.median(self.seconds):.2f} s p50, {max(self.seconds):.2f} s max ({len(self.seconds)} passes)"
        )


@dataclass
class Outage:
    """Requests sent while Redis is down and back: each must answer by its deadline."""

    sent: int = 0
    hung: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    late: dict[str, int] = field(default_factory=dict)  # hung requests by kind

    async def run(self, hub: Hub, machine_id: str, stop: asyncio.Event, paths_deadline_s: float) -> None:
        """A listing and a path check every 0.2 s until `stop`; late means past deadline + 1 s."""
        calls = [
            ("GET", "/api/machines?limit=100", None, 5.0),
            ("POST", f"/api/machines/{machine_id}/paths/exists", {"paths": ["/tmp"]}, paths_deadline_s),
        ]
        pending: set[asyncio.Task[None]] = set()
        while not stop.is_set():
            for call in calls:
                task = asyncio.create_task(self._one(hub, *call))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.sleep(0.2)
        await asyncio.gather(*pending)

    async def _one(self, hub: Hub, method: str, path: str, body: object, deadline_s: float) -> None:
        self.sent += 1
        t = time.perf_counter()
        try:
            response = await hub.http.request(method, path, json=body, timeout=deadline_s + 5)
            status = response.status_code
        except httpx2.TransportError:
            status = 0
        if time.perf_counter() - t > deadline_s + 1:
            self.hung += 1
            kind = "listings" if method == "GET" else "path checks"
            self.late[kind] = self.late.get(kind, 0) + 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
