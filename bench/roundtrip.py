"""Round-trip benchmark of the path check, from a bare Redis PING up to HTTP, against arq.

One run starts a private redis-server (loopback, temp dir), one hub process (`machine_hub api`)
and one agent process (`machine_hub agent`), both with the production default timings, then
measures one after the other, each after a warm-up:

  a. PING from the redis.asyncio client every process uses (core.connections.request_client);
  b. the Redis-only hub -> agent -> hub round trip: JobQueue + Inbox + Dispatcher built in this
     process (no HTTP) submit a 1-path paths job to the agent process;
  c. POST /api/machines/<id>/paths/exists to the hub over keep-alive HTTP/1.1 (one connection per
     concurrent worker, a tiny asyncio-streams client), sequentially and at a few concurrencies;
  d. the same check as an arq job (`enqueue_job` + `job.result()`) run by an arq worker process
     (bench/arq_worker.py), at arq's default poll delays (0.5 s) and at 0.01 s on both sides.

It prints the machine, one markdown table (p50/p99 in ms, req/s, Redis commands per request,
counting the commands Lua scripts run) and the targets, each PASS or FAIL; it exits 1 if one fails.
Run `.venv/bin/python bench/roundtrip.py` (about 60 s), with `--quick` (about 20 s) or see `--help`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import uvloop
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from redis.asyncio import Redis

from api.dispatch import Dispatcher, JobSpec, Verdict
from api.inbox import Inbox
from core.connections import blocking_client, request_client
from core.keys import Keys
from core.queue import JobQueue
from core.schemas import JobKind, JobState, PathsRequest
from core.settings import Settings
from machine_hub.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
NS, MACHINE, SECRET = "default", "bench-m1", "bench-secret"
COUNTS = {  # option: (full run, --quick, what it counts)
    "warmup": (300, 100, "untimed ops before each measurement"),
    "ping": (5000, 1000, "PINGs (a)"),
    "rt": (3000, 500, "Redis-only round trips (b)"),
    "http": (3000, 500, "sequential HTTP requests (c, concurrency 1)"),
    "load": (5000, 1000, "HTTP requests at each concurrency above 1 (c)"),
    "arq_default": (20, 5, "arq jobs at arq's default 0.5 s polls (d)"),
    "arq_fast": (100, 30, "arq jobs at 0.01 s polls (d)"),
}
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
    for op in ops:
        if isinstance(op, Http):
            op.writer.close()
    return Row(name, conc, lat, elapsed, cmds)


async def wait_until(what: str, check: Callable[[], Awaitable[object]], procs: Processes) -> None:
    for _ in range(600):  # 30 s
        procs.check()
        with contextlib.suppress(OSError, RuntimeError, asyncio.IncompleteReadError):
            if await check():
                return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"timed out after 30 s waiting for {what}")


async def arq_check(pool: ArqRedis, path: str, poll_delay: float) -> None:
    job = await pool.enqueue_job("check_paths", [path])
    if job is None or await job.result(timeout=60, poll_delay=poll_delay) != {path: True}:
        raise RuntimeError("arq job failed")


async def bench(args: argparse.Namespace, server: RedisServer, procs: Processes, tmp: Path) -> tuple[list[Row], str]:
    settings = Settings(redis_url=server.url, cli_api_token=SECRET, key_prefix="bench")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MACHINE_HUB_")} | settings.to_env()
    env |= {"HOME": str(tmp), "BENCH_REDIS_URL": server.url}
    cli, port, w, path = [sys.executable, "-m", "machine_hub"], free_port(), args.warmup, str(tmp)
    procs.start("agent", [*cli, "agent", "--machine-id", MACHINE, "--home", str(tmp / "agent")], env, tmp)
    procs.start("hub", [*cli, "api", "--port", str(port), "--log-level", "warning"], env, tmp)
    redis, keys = request_client(settings), Keys(settings.key_prefix)
    queue = JobQueue(redis, keys)
    inbox = Inbox(queue, blocking_client(settings), keys, "bench", block_s=settings.block_s, reconnect_max_s=2.0)
    reader = asyncio.create_task(inbox.run())
    dispatcher = Dispatcher(queue, inbox, settings)
    paths = msgspec.json.encode(PathsRequest(paths=[path]))
    timeout_s, retention_s = settings.paths_timeout_s, settings.paths_job_retention_s
    spec = JobSpec(JobKind.PATHS, paths, timeout_s, timeout_s, retention_s, b"null")  # as api/routes.py does
    request = (
        f"POST /api/machines/{MACHINE}/paths/exists HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {SECRET}\r\nContent-Type: application/json\r\nContent-Length: {len(paths)}\r\n\r\n"
    ).encode() + paths

    async def http() -> Http:
        return await Http(port, request).open()

    async def roundtrip() -> None:
        out = await dispatcher.submit(NS, MACHINE, spec)
        if out.verdict is not Verdict.DONE or out.state is not JobState.SUCCEEDED or b"true" not in out.result:
            raise RuntimeError(f"paths job failed: {out}")

    rows: list[Row] = []
    try:
        await wait_until("the agent's heartbeat", lambda: redis.exists(keys.heartbeat(NS, MACHINE)), procs)
        await wait_until("the hub to answer a path check", lambda: load(redis, "probe", http, 1, 1), procs)
        for name, op, n in (("a. Redis PING (request_client)", redis.ping, args.ping),
                            ("b. Redis-only paths job (Dispatcher.submit)", roundtrip, args.rt)):  # fmt: skip
            await load(redis, "warm-up", same(op), w, 1)
            rows.append(await load(redis, name, same(op), n, 1))
        for conc in args.conc:
            await load(redis, "warm-up", http, w, conc)
            n = args.http if conc == 1 else args.load
            rows.append(await load(redis, "c. HTTP POST paths/exists", http, n, conc))
        pool = await create_pool(RedisSettings.from_dsn(server.url))
        try:
            for label, delay, n in (("defaults", 0.5, args.arq_default), ("poll 0.01 both sides", 0.01, args.arq_fast)):
                argv = [sys.executable, "-m", "arq", "bench.arq_worker.WorkerSettings"]
                procs.start("arq", argv, env | {"BENCH_ARQ_POLL_DELAY": str(delay)}, ROOT)
                op = same(functools.partial(arq_check, pool, path, delay))
                await load(redis, "warm-up", op, 3, 1)
                rows.append(await load(redis, f"d. arq enqueue_job + job.result(), {label}", op, n, 1, delay))
                await asyncio.to_thread(procs.stop, "arq")  # without blocking the loop
        finally:
            await pool.aclose()
        return rows, (await redis.info("server"))["redis_version"]
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await redis.aclose()
        await inbox.blocking.aclose()


def report(rows: list[Row], redis_version: str) -> bool:
    print(f"machine: nproc {os.cpu_count()}, Python {platform.python_version()}, redis-server {redis_version},",
          f"{platform.system()} {platform.release()}, 1-min load avg {os.getloadavg()[0]:.2f}")  # fmt: skip
    print("\n| measurement | conc | n | p50 ms | p99 ms | req/s | Redis cmds/req |\n|---|---|---|---|---|---|---|")
    print("\n".join(row.line() for row in rows))
    ping, rt, arq_default, arq_fast = rows[0], rows[1], rows[-2], rows[-1]
    http = [r for r in rows if r.name.startswith("c.")]
    seq, best = http[0], max(http, key=lambda r: r.rate)
    checks = [
        ("Redis-only round trip p50 / PING p50", rt.ms(0.5) / ping.ms(0.5), "x", "<=", 5.0),
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sample counts (the options below still win)")
    quick_run = "--quick" in sys.argv[1:]  # decides the defaults shown by --help too
    for key, (full, quick, what) in COUNTS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, metavar="N", default=quick if quick_run else full,
                            help=f"{what} [{full}; quick {quick}]")  # fmt: skip
    parser.add_argument("--conc", type=lambda s: sorted({1, *map(int, s.split(","))}), default=[1, 8, 32, 64],
                        help="HTTP concurrencies, comma-separated; 1 is always run [1,8,32,64]")  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mh-bench-") as name:
        tmp = Path(name)
        server, procs = RedisServer(tmp / "redis"), Processes(tmp)
        try:
            server.start()
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                rows, version = runner.run(bench(args, server, procs, tmp))
        finally:
            procs.stop_all()
            server.stop()
    return 0 if report(rows, version) else 1


if __name__ == "__main__":
    sys.exit(main())
