"""Slow and many clients against one hub: how many it holds while it still answers in time.

One run starts a private redis-server and one hub (`machine_hub api`) with the production
defaults, then opens slow connections in steps: a third say nothing, a third send their headers
a line every 2 s (slowloris), a third send a body a byte every 2 s (slow POST). At each step,
with all of them open (any the hub closed are opened again, as an attacker would), it times
/readyz and an authenticated GET /api/machines, each on a new connection, as a new client would.

It prints one table (slow connections held, p50 and max latency of both, whether every /readyz
answered within 1 s) and the largest step at which it did. Run
`.venv/bin/python bench/abuse.py` (about 40 s); `--steps 1000,5000` and `--samples N` change it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

import uvloop

from core.settings import Settings
from machine_hub.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret"
DEADLINE_S = 1.0
TRICKLE_S = 2.0
STEPS = [1000, 2500, 5000, 7500, 9500]


class Slow(asyncio.Protocol):
    """One slow client: `kind` 0 idle, 1 slowloris, 2 slow POST. Reopened when the hub ends it."""

    def __init__(self, port: int, kind: int) -> None:
        self.port, self.kind = port, kind
        self.transport: asyncio.Transport | None = None
        self.answered = False  # the hub sent something (a 408, say): it no longer holds this one

    @property
    def held(self) -> bool:
        return self.transport is not None and not self.transport.is_closing() and not self.answered

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport, self.answered = cast(asyncio.Transport, transport), False  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.answered = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    async def connect(self) -> None:
        await asyncio.get_running_loop().create_connection(lambda: self, "127.0.0.1", self.port)
        if self.transport is None:
            return  # ended at once: the hub refused it; the next round tries again
        if self.kind == 1:
            self.transport.write(b"GET /api/machines HTTP/1.1\r\nHost: hub\r\n")
        elif self.kind == 2:
            head = f"POST /api/machines/m-x/paths/exists HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {SECRET}\r\n"
            self.transport.write(head.encode() + b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")

    async def trickle(self) -> None:
        if not self.held:
            self.close()
            await self.connect()
        elif self.kind == 1 and self.transport is not None:
            self.transport.write(b"X-Slow: 1\r\n")
        elif self.kind == 2 and self.transport is not None:
            self.transport.write(b" ")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def timed_get(port: int, path: str, auth: bool) -> float:
    """Seconds from connecting to the whole answer; raises unless it is a 200."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        header = f"Authorization: Bearer {SECRET}\r\n" if auth else ""
        writer.write(f"GET {path} HTTP/1.1\r\nHost: hub\r\n{header}Connection: close\r\n\r\n".encode())
        data = await reader.read()
    finally:
        writer.close()
    if not data.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError(f"{path}: {data[:200]!r}")
    return time.perf_counter() - started


async def sample(port: int, path: str, auth: bool, n: int) -> list[float | None]:
    out: list[float | None] = []
    for _ in range(n):
        try:
            out.append(await asyncio.wait_for(timed_get(port, path, auth), 10))
        except (TimeoutError, OSError, RuntimeError):
            out.append(None)  # no answer at all
        await asyncio.sleep(0.02)
    return out


def cell(values: list[float | None]) -> str:
    got = sorted(v for v in values if v is not None)
    if not got:
        return "none | none"
    p50, worst = got[len(got) // 2] * 1000, (got[-1] if len(got) == len(values) else float("inf")) * 1000
    return f"{p50:.1f} | {worst:.1f}"


async def run(port: int, steps: list[int], samples: int) -> list[tuple[int, list[float | None], list[float | None]]]:
    clients: list[Slow] = []
    rows = []
    stop = asyncio.Event()

    async def keep_trickling() -> None:
        while not stop.is_set():
            for i in range(0, len(clients), 200):
                await asyncio.gather(*(c.trickle() for c in clients[i : i + 200]), return_exceptions=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TRICKLE_S)

    trickler: asyncio.Task[None] | None = None
    for target in steps:
        while len(clients) < target:
            batch = [Slow(port, (len(clients) + i) % 3) for i in range(min(500, target - len(clients)))]
            await asyncio.gather(*(c.connect() for c in batch))
            clients.extend(batch)
        if trickler is None:
            trickler = asyncio.create_task(keep_trickling())
        await asyncio.sleep(0.5)
        held = sum(c.held for c in clients)
        ready = await sample(port, "/readyz", False, samples)
        authed = await sample(port, "/api/machines", True, samples)
        rows.append((held, ready, authed))
    stop.set()
    if trickler is not None:
        await trickler
    for c in clients:
        c.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=lambda s: [int(x) for x in s.split(",")], default=STEPS,
                        help=f"slow connections at each step [{','.join(map(str, STEPS))}]")  # fmt: skip
    parser.add_argument("--samples", type=int, default=20, help="timed requests of each kind per step [20]")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this client holds every slow connection
    if max(args.steps) + 200 > hard:
        sys.exit(f"the open-files limit ({hard}) is too low for {max(args.steps)} connections")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mh-abuse-") as name:
        tmp = Path(name)
        server = RedisServer(tmp / "redis").start()
        settings = Settings(redis_url=server.url, cli_api_token=SECRET, key_prefix="abuse", port=port)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MACHINE_HUB_")} | settings.to_env()
        log = (tmp / "hub.log").open("ab")
        hub = subprocess.Popen(
            [sys.executable, "-m", "machine_hub", "api", "--port", str(port), "--log-level", "warning"],
            env=env, cwd=ROOT, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(_wait_up(port, hub))
                rows = runner.run(run(port, args.steps, args.samples))
        finally:
            hub.terminate()
            hub.wait(15)
            server.stop()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.2f}; hub defaults (header {settings.header_timeout_s:g} s, "
          f"body {settings.body_timeout_s:g} s, max {settings.max_connections} connections)\n")  # fmt: skip
    print("| slow connections held | /readyz p50 ms | /readyz max ms | auth GET p50 ms | auth GET max ms "
          f"| all /readyz within {DEADLINE_S:g} s |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    best = 0
    for held, ready, authed in rows:
        ok = all(v is not None and v <= DEADLINE_S for v in ready)
        best = max(best, held) if ok else best
        print(f"| {held} | {cell(ready)} | {cell(authed)} | {'yes' if ok else 'no'} |")
    print(f"\nheld {best} slow connections while answering every /readyz within {DEADLINE_S:g} s")
    return 0 if best else 1


async def _wait_up(port: int, hub: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if hub.poll() is not None:
            raise RuntimeError("the hub exited at start")
        with contextlib.suppress(OSError, RuntimeError):
            await timed_get(port, "/readyz", False)
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("the hub did not start")


if __name__ == "__main__":
    sys.exit(main())
