"""The measuring parts of bench/roundtrip.py: timed loads, the HTTP client, the child processes
and the report with its targets."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import platform
import random
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

Op = Callable[[], Awaitable[object]]
Factory = Callable[[], Awaitable[Op]]


@dataclass
class Row:
    name: str
    conc: int
    lat_s: list[float]
    elapsed_s: float
    cmds: int

    def ms(self, q: float) -> float:
        ordered = sorted(self.lat_s)
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] * 1000

    @property
    def rate(self) -> float:
        return len(self.lat_s) / self.elapsed_s

    def line(self) -> str:
        n, p50, p99 = len(self.lat_s), self.ms(0.5), self.ms(0.99)
        return f"| {self.name} | {self.conc} | {n} | {p50:.3f} | {p99:.3f} | {self.rate:.0f} | {self.cmds / n:.1f} |"


class Http:
    """One keep-alive HTTP/1.1 connection sending the same pre-built request."""

    def __init__(self, port: int, request: bytes) -> None:
        self.port, self.request = port, request

    async def open(self) -> Http:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def __call__(self) -> bytes:
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().partition(b"content-length:")[2].partition(b"\r\n")[0] or 0)
        body = await self.reader.readexactly(length)
        if not head.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(f"hub answered {head.splitlines()[0]!r}: {body[:300]!r}")
        return body


class Processes:
    """Children in sessions of their own (Ctrl-C reaches only us), each logging to <tmp>/<name>.log."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.running = tmp, dict[str, subprocess.Popen[bytes]]()

    def start(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        with (self.tmp / f"{name}.log").open("ab") as log:
            self.running[name] = subprocess.Popen(
                argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )

    def check(self) -> None:
        for name, proc in self.running.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited:\n{(self.tmp / f'{name}.log').read_text()[-2000:]}")

    def stop(self, name: str) -> None:
        proc = self.running.pop(name)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self) -> None:
        for name in reversed(list(self.running)):  # the agent last: it outlives the hub
            self.stop(name)


def same(op: Op) -> Factory:
    """An op factory handing every worker the same op (one shared client)."""

    async def make() -> Op:
        return op

    return make


IDLE_RATE = [0.0]  # Redis commands per second with no request in flight (heartbeats, blocked pops)


async def measure_idle(redis: Redis, seconds: float = 2.0) -> None:
    """What the processes cost Redis when nothing is asked of them, to take out of each row's count."""
    before = (await redis.info("stats"))["total_commands_processed"]
    await asyncio.sleep(seconds)
    IDLE_RATE[0] = ((await redis.info("stats"))["total_commands_processed"] - before - 1) / seconds


async def load(redis: Redis, name: str, make_op: Factory, n: int, conc: int, gap_s: float = 0.0) -> Row:
    """Run `n` ops on `conc` workers (one op object each), timing every op."""
    ops = [await make_op() for _ in range(conc)]
    lat: list[float] = []
    left, paused = n, 0.0

    async def worker(op: Op) -> None:
        nonlocal left, paused
        while left > 0:
            left -= 1
            if gap_s:  # an untimed random pause, so a polling consumer's phase cannot lock to ours
                t = time.perf_counter()
                await asyncio.sleep(random.uniform(0, gap_s))
                paused += time.perf_counter() - t
            t = time.perf_counter()
            await op()
            lat.append(time.perf_counter() - t)

    before = (await redis.info("stats"))["total_commands_processed"]
    start = time.perf_counter()
    await asyncio.gather(*(worker(op) for op in ops))
    elapsed = time.perf_counter() - start - paused / conc
    cmds = (await redis.info("stats"))["total_commands_processed"] - before - 1  # minus the first INFO
    cmds = max(0, round(cmds - IDLE_RATE[0] * (elapsed + paused / conc)))  # minus the idle background
    for op in ops:
        if isinstance(op, Http):
            op.writer.close()
    return Row(name, conc, lat, elapsed, cmds)


async def load_alternating(redis: Redis, ops: list[tuple[str, Op]], n: int) -> list[Row]:
    """`n` of each op, one after the other in turn, timed apart; each row's commands are the total
    over the ops (they cost the same when their counts agree, as the separate rows show)."""
    lat: list[list[float]] = [[] for _ in ops]
    before = (await redis.info("stats"))["total_commands_processed"]
    start = time.perf_counter()
    for _ in range(n):
        for i, (_, op) in enumerate(ops):
            t = time.perf_counter()
            await op()
            lat[i].append(time.perf_counter() - t)
    elapsed = time.perf_counter() - start
    cmds = (await redis.info("stats"))["total_commands_processed"] - before - 1
    each = max(0, round((cmds - IDLE_RATE[0] * elapsed) / len(ops)))
    return [Row(name, 1, times, sum(times), each) for (name, _), times in zip(ops, lat, strict=True)]


async def wait_until(what: str, check: Callable[[], Awaitable[object]], procs: Processes) -> None:
    for _ in range(600):  # 30 s
        procs.check()
        with contextlib.suppress(OSError, RuntimeError, asyncio.IncompleteReadError):
            if await check():
                return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"timed out after 30 s waiting for {what}")


def report(rows: list[Row], redis_version: str) -> bool:
    print(f"machine: nproc {os.cpu_count()}, Python {platform.python_version()}, redis-server {redis_version},",
          f"{platform.system()} {platform.release()}, 1-min load avg {os.getloadavg()[0]:.2f}")  # fmt: skip
    print("\n| measurement | conc | n | p50 ms | p99 ms | req/s | Redis cmds/req |\n|---|---|---|---|---|---|---|")
    print("\n".join(row.line() for row in rows))
    ping, rt, rt_open, spawn = rows[0], rows[1], rows[2], rows[-2]
    arq_default, arq_fast = rows[-4], rows[-3]
    http = [r for r in rows if r.name.startswith("c.")]
    seq, best = http[0], max(http, key=lambda r: r.rate)
    checks = [
        ("Redis-only round trip p50 / PING p50", rt.ms(0.5) / ping.ms(0.5), "x", "<=", 5.0),
        ("ACL users / default user, Redis-only p50", rt.ms(0.5) / rt_open.ms(0.5), "x", "<=", 1.10),
        ("Redis commands per path check", rt.cmds / len(rt.lat_s), "", "<=", 12.0),
        ("Redis commands per spawn", spawn.cmds / len(spawn.lat_s), "", "<=", 20.0),
        ("arq (defaults) p50 / HTTP sequential p50", arq_default.ms(0.5) / seq.ms(0.5), "x", ">=", 250.0),
        ("HTTP sequential p50", seq.ms(0.5), " ms", "<=", 2.0),
        ("HTTP sequential p99", seq.ms(0.99), " ms", "<=", 10.0),
        (f"one hub process, max HTTP req/s (at c={best.conc})", best.rate, "/s", ">=", 1000.0),
    ]
    print("\n| target | measured | goal | result |\n|---|---|---|---|")
    passed = [value <= goal if op == "<=" else value >= goal for _, value, _, op, goal in checks]
    for (name, value, unit, op, goal), ok in zip(checks, passed, strict=True):
        print(f"| {name} | {value:.2f}{unit} | {op} {goal:g}{unit} | {'PASS' if ok else 'FAIL'} |")
    print(f"| arq (poll 0.01) p50 / HTTP sequential p50 | {arq_fast.ms(0.5) / seq.ms(0.5):.2f}x | (info) | |")
    return all(passed)
