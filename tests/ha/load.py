"""A steady stream of path checks and spawns through real hubs, recorded call by call, for failovers.

Each spawn runs in a directory of its own, so the fake CLI's records (one per process that really
started) say how often each spawn ran, whatever the hubs answered.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

from tests.e2e.harness import Stack

CLIENT_TIMEOUT_S = 60.0  # far past every deadline: a request that hangs shows as slow, not as a client error
RETRY_FOR_S = 20.0
RETRY_PAUSE_S = 0.1  # after a 503, as a client should, not in a hot loop


@dataclass(frozen=True)
class Call:
    kind: str  # "paths" or "spawn"
    machine_id: str
    started: float  # time.monotonic()
    elapsed_s: float
    status: int  # 0: no HTTP answer at all
    body: dict[str, Any]
    directory: str = ""


@dataclass
class Load:
    """Callers of path checks and of spawns (`threads` of each), each sending its next request as
    soon as it has its answer."""

    stack: Stack
    machine_ids: list[str]
    threads: int = 2
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._counter = itertools.count()
        self._workers = [
            threading.Thread(target=self._run, args=(spawns,), daemon=True)
            for spawns in (False, True)
            for _ in range(self.threads)
        ]
        self.folder = self.stack.tmp / "load"
        self.folder.mkdir(exist_ok=True)

    def __enter__(self) -> Load:
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(CLIENT_TIMEOUT_S + 5)

    def answered(self, since: float = 0.0, status: int = 200) -> int:
        """How many calls that started after `since` got `status`."""
        return sum(1 for c in list(self.calls) if c.started >= since and c.status == status)

    def _run(self, spawns: bool) -> None:
        with httpx2.Client(timeout=CLIENT_TIMEOUT_S) as client:
            while not self._stop.is_set():
                n = next(self._counter)
                machine_id = self.machine_ids[n % len(self.machine_ids)]
                if spawns:
                    self._spawn(client, n, machine_id)
                else:
                    call = self._call(client, n, machine_id, "paths", {"paths": [str(self.folder)]})
                    self.calls.append(call)
                    if call.status == 503:
                        time.sleep(RETRY_PAUSE_S)

    def _spawn(self, client: httpx2.Client, n: int, machine_id: str) -> None:
        """A spawn with an Idempotency-Key, sent again after a 503 as a careful client would."""
        body = {"directory": str(self.folder / f"s{n}")}
        first = time.monotonic()
        while True:
            call = self._call(client, n, machine_id, "spawn", body, **{"Idempotency-Key": f"load-{n}"})
            self.calls.append(call)
            if call.status != 503 or time.monotonic() - first > RETRY_FOR_S or self._stop.is_set():
                return
            time.sleep(RETRY_PAUSE_S)

    def _call(
        self, client: httpx2.Client, n: int, machine_id: str, kind: str, body: dict[str, Any], **headers: str
    ) -> Call:
        hub = self.stack.hubs[n % len(self.stack.hubs)]
        url = f"{hub.url}/api/machines/{machine_id}/" + ("spawn" if kind == "spawn" else "paths/exists")
        started = time.monotonic()
        try:
            r = client.post(url, headers={**self.stack.auth(), **headers}, json=body)
            status, answer = r.status_code, r.json()
        except (httpx2.HTTPError, ValueError) as exc:
            status, answer = 0, {"error": repr(exc)}
        directory = str(body.get("directory", ""))
        return Call(kind, machine_id, started, time.monotonic() - started, status, answer, directory)


def launches_by_directory(stack: Stack) -> Counter[str]:
    return Counter(launch["cwd"] for launch in stack.launches())


def deadline_s(stack: Stack, call: Call) -> float:
    """The longest a call may take: its job's deadline, and a few Redis timeouts on the way."""
    s = stack.settings
    job = s.spawn_timeout_s if call.kind == "spawn" else s.paths_timeout_s
    return job + 3 * (s.redis_socket_timeout_s + s.redis_connect_timeout_s)


def check_calls(stack: Stack, calls: list[Call]) -> dict[str, int]:
    """Every call got 200 or 503 within its deadline, and no spawn ran twice (or ran after the hub
    said it would not); how many calls of each outcome there were."""
    launched = launches_by_directory(stack)
    outcomes: Counter[str] = Counter()
    for call in calls:
        assert call.status in (200, 503), call
        assert call.elapsed_s <= deadline_s(stack, call), call
        runs = launched[call.directory] if call.directory else 0
        assert runs <= 1, f"spawn ran {runs} times: {call}"
        if call.kind == "spawn" and call.status == 200:
            code = call.body.get("code") or "succeeded"
            if call.body["success"]:
                assert runs == 1, f"a spawn answered success has no process: {call}"
            elif code == "not_started":
                assert runs == 0, f"a spawn answered not_started ran: {call}"
            outcomes[f"spawn {code}"] += 1
        else:
            outcomes[f"{call.kind} {call.status}"] += 1
    return dict(outcomes)


def directories(calls: list[Call]) -> set[Path]:
    return {Path(c.directory) for c in calls if c.directory}
