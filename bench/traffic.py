"""The failover bench's clients: path checks, spawns and machine listings at a steady pace, every
answer recorded with its start, end, status and failure code.

Each client waits for its answer, then paces itself to its rate. After a failure it backs off
(0.25 s, doubling to 2 s, with jitter) before the next request, as a client should when a
service answers 503; the share of failed requests over an outage depends on that choice, so the
report prints the counts too. A request whose answer is later than the hub's own deadline for it
plus `DEADLINE_MARGIN_S` is abandoned and counted as past its deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx2

from core.settings import Settings

DEADLINE_MARGIN_S = 2.0
LIST_DEADLINE_S = 10.0
BACKOFF_S = (0.25, 2.0)
# What a spawn may answer instead of success when the hub cannot know or cannot do it: each says
# what happened to the job, none is a guess (README, "What at most once means here").
DEFINITE_SPAWN_CODES = frozenset({"outcome_unknown", "not_started", "machine_offline"})


@dataclass(frozen=True, slots=True)
class Answer:
    kind: str  # paths | spawn | list
    started: float  # time.monotonic()
    ended: float
    status: int  # HTTP status; 0 when none came (connection failed, or past the deadline)
    code: str  # the failure's code from the body, "past_deadline", or the transport error's name
    ok: bool
    request_id: str  # sent as X-Bench-Id, so the proxy's log can be matched
    directory: str = ""  # a spawn's folder
    count: int = 0  # machines a listing returned

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    @property
    def definite(self) -> bool:
        """A failure the contract allows while Redis fails over: 503, or a spawn's definite outcome."""
        return self.status == 503 or (self.kind == "spawn" and self.status == 200 and self.code in DEFINITE_SPAWN_CODES)


class Traffic:
    """Clients spread over `urls` (one each, in turn) and over `machines`; answers in `answers`."""

    def __init__(
        self, name: str, urls: list[str], machines: list[str], workspace: Path, settings: Settings, *, retries: int = 0
    ):
        self.name, self.urls, self.machines, self.workspace = name, urls, machines, workspace
        self.deadlines = {
            "paths": settings.paths_timeout_s + DEADLINE_MARGIN_S,
            "spawn": settings.spawn_timeout_s + DEADLINE_MARGIN_S,
            "list": LIST_DEADLINE_S,
        }
        self.retries = retries  # times a request is sent again after the proxy's 502 or no answer at all
        self.answers: list[Answer] = []
        self.attempts: list[Answer] = []  # every attempt, retries included
        self.stop = asyncio.Event()
        self._machine = itertools.cycle(machines)
        self._spawns = itertools.count()
        self._auth = {"Authorization": f"Bearer {settings.cli_api_token}"}

    async def run(self, paths: tuple[int, float], spawns: tuple[int, float], lists: tuple[int, float]) -> None:
        """(clients, requests per second each) of each kind, until `stop` is set."""
        plan = [("paths", *paths), ("spawn", *spawns), ("list", *lists)]
        clients = [(kind, rate) for kind, n, rate in plan for _ in range(n)]
        limits = httpx2.Limits(max_connections=len(clients) * 2)
        async with httpx2.AsyncClient(headers=self._auth, limits=limits) as http:
            await asyncio.gather(*(self._client(http, i, k, r) for i, (k, r) in enumerate(clients)))

    async def _client(self, http: httpx2.AsyncClient, n: int, kind: str, rate: float) -> None:
        url = self.urls[n % len(self.urls)]
        failures = 0
        await asyncio.sleep(random.uniform(0, 1 / rate))  # the clients' phases spread out
        while not self.stop.is_set():
            answer = await self._request(http, url, kind)
            self.answers.append(answer)
            failures = 0 if answer.ok else failures + 1
            pause = 1 / rate - answer.seconds
            if failures:
                pause = max(pause, min(BACKOFF_S[1], BACKOFF_S[0] * 2 ** (failures - 1)) * random.uniform(0.5, 1))
            if pause > 0:
                await asyncio.wait([asyncio.ensure_future(self.stop.wait())], timeout=pause)

    async def _request(self, http: httpx2.AsyncClient, url: str, kind: str) -> Answer:
        body: object = None
        headers: dict[str, str] = {}
        directory = ""
        if kind == "list":
            method, target = "GET", f"{url}/api/machines"
        elif kind == "paths":
            method, target = "POST", f"{url}/api/machines/{next(self._machine)}/paths/exists"
            body = {"paths": [str(self.workspace), f"{self.workspace}/missing"]}
        else:
            folder = self.workspace / f"{self.name}-{next(self._spawns)}"
            folder.mkdir()
            method, target, directory = "POST", f"{url}/api/machines/{next(self._machine)}/spawn", str(folder)
            body = {"directory": directory}
            headers = {"Idempotency-Key": folder.name}  # the same on every attempt of this spawn
        answer = await self._attempt(http, method, target, kind, body, headers, directory)
        for _ in range(self.retries):
            # Every request here is safe to send again (read-only, or a spawn with its key).
            if answer.status != 502 and (answer.status or answer.code == "past_deadline"):
                break
            answer = await self._attempt(http, method, target, kind, body, headers, directory)
        return answer

    async def _attempt(
        self,
        http: httpx2.AsyncClient,
        method: str,
        url: str,
        kind: str,
        body: object,
        headers: dict[str, str],
        directory: str,
    ) -> Answer:
        request_id = uuid.uuid4().hex
        started = time.monotonic()
        status, code, ok, count = 0, "", False, 0
        try:
            response = await http.request(
                method, url, json=body, headers=headers | {"X-Bench-Id": request_id}, timeout=self.deadlines[kind]
            )
            status = response.status_code
            data = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
            code = str(data.get("code") or ("" if status == 200 else f"http_{status}"))
            if kind == "list":
                count = len(data.get("machines", []))
            ok = status == 200 and (data.get("success", True) is True)
            code = "" if ok else code or "failed"
        except httpx2.TimeoutException:
            code = "past_deadline"
        except httpx2.TransportError as exc:
            code = type(exc).__name__
        answer = Answer(kind, started, time.monotonic(), status, code, ok, request_id, directory, count)
        self.attempts.append(answer)
        return answer
