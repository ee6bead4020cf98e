"""Round-trip benchmark of the path check, from a bare Redis PING up to HTTP, against arq.

One run starts a private redis-server (loopback, temp dir), one hub process (`machine_hub api`)
and one agent process (`machine_hub agent`), both with the production default timings, then
measures one after the other, each after a warm-up:

  a. PING from the redis.asyncio client every process uses (core.connections.request_client);
  b. the Redis-only hub -> agent -> hub round trip: JobQueue + Inbox + Dispatcher built in this
     process (no HTTP) submit a 1-path paths job to an agent process, once with every process on
     its own least-privilege Redis user (as deployed) and once on the unrestricted default user,
     to price the ACL checks;
  c. POST /api/machines/<id>/paths/exists to the hub over keep-alive HTTP/1.1 (one connection per
     concurrent worker, a tiny asyncio-streams client), sequentially and at a few concurrencies;
  d. the same check as an arq job (`enqueue_job` + `job.result()`) run by an arq worker process
     (bench/arq_worker.py), at arq's default poll delays (0.5 s) and at 0.01 s on both sides;
  e. a spawn of a stand-in CLI (tests/fixtures/fake_cli.py), with a 50 ms settle time, for its
     Redis commands: through Dispatcher.submit (the job protocol), and through HTTP (adding the
     spawn rate limits and the namespace's stored-jobs quota).

It prints the machine, one markdown table (p50/p99 in ms, req/s, Redis commands per request,
counting the commands Lua scripts run, less what the idle processes cost meanwhile) and the
targets, each PASS or FAIL; it exits 1 if one fails.
Run `.venv/bin/python bench/roundtrip.py` (about 60 s), with `--quick` (about 20 s) or see `--help`.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import uvloop
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

from api.dispatch import Dispatcher, JobSpec, Verdict
from api.inbox import Inbox
from bench.roundtrip_load import (
    Http,
    Op,
    Processes,
    Row,
    load,
    load_alternating,
    measure_idle,
    report,
    same,
    wait_until,
)
from core.admin import Admin
from core.connections import blocking_client, request_client
from core.keys import Keys
from core.lua import Scripts
from core.notifications import NOTIFY_FLAGS
from core.queue import JobQueue
from core.registry import Registry
from core.schemas import JobKind, JobState, PathsRequest, SpawnRequest
from core.settings import Settings
from machine_hub.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
NS, MACHINE, OPEN_MACHINE, SECRET = "default", "bench-m1", "bench-open", "bench-secret"
COUNTS = {  # option: (full run, --quick, what it counts)
    "warmup": (300, 100, "untimed ops before each measurement"),
    "ping": (5000, 1000, "PINGs (a)"),
    "rt": (3000, 500, "Redis-only round trips (b)"),
    "http": (3000, 500, "sequential HTTP requests (c, concurrency 1)"),
    "load": (5000, 1000, "HTTP requests at each concurrency above 1 (c)"),
    "arq_default": (20, 5, "arq jobs at arq's default 0.5 s polls (d)"),
    "arq_fast": (100, 30, "arq jobs at 0.01 s polls (d)"),
    "spawn": (30, 10, "spawns (e)"),
}


async def arq_check(pool: ArqRedis, path: str, poll_delay: float) -> None:
    job = await pool.enqueue_job("check_paths", [path])
    if job is None or await job.result(timeout=60, poll_delay=poll_delay) != {path: True}:
        raise RuntimeError("arq job failed")


async def users(settings: Settings) -> dict[str, str]:
    """`machine-hub setup` and `machine add`, as an operator runs them: the URL of every process."""
    admin_client = request_client(settings)
    try:
        admin = Admin(admin_client, settings)
        await admin.configure_notifications(NOTIFY_FLAGS)
        urls = {"hub": (await admin.add_service("hub")).url, "admin": settings.redis_url}
        urls["agent"] = (await admin.add_machine(NS, MACHINE))[1].url
        await Registry(admin_client, Keys(settings.key_prefix), admin.scripts).register(NS, OPEN_MACHINE)
        return urls
    finally:
        await admin_client.aclose()


class Submitter:
    """JobQueue + Inbox + Dispatcher on one Redis user, as a hub process holds them."""

    def __init__(self, settings: Settings, hub_id: str) -> None:
        self.redis, keys = request_client(settings), Keys(settings.key_prefix)
        self.queue = JobQueue(self.redis, keys, Scripts(self.redis, can_load=True))
        self.inbox = Inbox(self.queue, blocking_client(settings), hub_id, block_s=settings.block_s, reconnect_max_s=2.0)
        self.dispatcher = Dispatcher(self.queue, self.inbox, settings)
        self.reader = asyncio.create_task(self.inbox.run())

    async def close(self) -> None:
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)
        await self.redis.aclose()
        await self.inbox.blocking.aclose()


async def bench(args: argparse.Namespace, server: RedisServer, procs: Processes, tmp: Path) -> tuple[list[Row], str]:
    # The spawn limits stay on (they cost the same whatever their values), high enough for the runs.
    settings = Settings(
        redis_url=server.url,
        cli_api_token=SECRET,
        key_prefix="bench",
        spawn_settle_s=0.05,
        spawns_per_minute_namespace=100_000,
        spawns_per_minute_token=100_000,
    )
    urls = await users(settings)
    bin_dir = tmp / "bin"
    _fake_cli().install(bin_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MACHINE_HUB_")} | settings.to_env()
    env |= {"HOME": str(tmp), "BENCH_REDIS_URL": server.url, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env |= {"FAKE_CLI_LIFETIME": "120", "MACHINE_HUB_LAUNCHER": "pty"}
    cli, port, w, path = [sys.executable, "-m", "machine_hub"], free_port(), args.warmup, str(tmp)
    agent = [*cli, "agent", "--machine-id", MACHINE, "--home", str(tmp / "agent")]
    procs.start("agent", agent, env | {"REDIS_URL": urls["agent"]}, tmp)
    open_agent = [*cli, "agent", "--machine-id", OPEN_MACHINE, "--home", str(tmp / "open-agent")]
    procs.start("open-agent", open_agent, env, tmp)  # the default user: no ACL rules to check
    procs.start(
        "hub", [*cli, "api", "--port", str(port), "--log-level", "warning"], env | {"REDIS_URL": urls["hub"]}, tmp
    )
    confined = Submitter(msgspec.structs.replace(settings, redis_url=urls["hub"]), "b0000000000000e1")
    unconfined = Submitter(settings, "b0000000000000e2")
    redis, keys = unconfined.redis, Keys(settings.key_prefix)
    paths = msgspec.json.encode(PathsRequest(paths=[path]))
    timeout_s, retention_s = settings.paths_timeout_s, 0.0
    spec = JobSpec(JobKind.PATHS, paths, timeout_s, timeout_s, retention_s, b"null")  # as api/routes.py does
    request = (
        f"POST /api/machines/{MACHINE}/paths/exists HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {SECRET}\r\nContent-Type: application/json\r\nContent-Length: {len(paths)}\r\n\r\n"
    ).encode() + paths

    async def http() -> Http:
        return await Http(port, request).open()

    def roundtrip(submitter: Submitter, machine_id: str) -> Op:
        async def op() -> None:
            out = await submitter.dispatcher.submit(NS, machine_id, spec)
            if out.verdict is not Verdict.DONE or out.state is not JobState.SUCCEEDED or b"true" not in out.result:
                raise RuntimeError(f"paths job failed: {out}")

        return op

    spawned = 0

    async def spawn() -> None:
        nonlocal spawned
        spawned += 1
        args_ = msgspec.json.encode(SpawnRequest(directory=str(tmp / "spawns" / str(spawned)), agent="claude"))
        spawn_spec = JobSpec(JobKind.SPAWN, args_, 10.0, 30.0, 600.0, b"{}", record_args=args_)
        out = await confined.dispatcher.submit(NS, MACHINE, spawn_spec)
        if out.verdict is not Verdict.DONE or out.state is not JobState.SUCCEEDED:
            raise RuntimeError(f"spawn failed: {out} {out.result!r}")

    async def http_spawn() -> None:
        nonlocal spawned
        spawned += 1
        body = msgspec.json.encode({"directory": str(tmp / "spawns" / str(spawned))})
        head = (
            f"POST /api/machines/{MACHINE}/spawn HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {SECRET}"
            f"\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        answer = await (await Http(port, head.encode() + body).open())()
        if b'"success":true' not in answer:
            raise RuntimeError(f"spawn failed: {answer!r}")

    rows: list[Row] = []
    try:
        for machine_id in (MACHINE, OPEN_MACHINE):
            await wait_until(
                f"{machine_id}'s heartbeat", functools.partial(redis.exists, keys.heartbeat(NS, machine_id)), procs
            )
        await wait_until("the hub to answer a path check", lambda: load(redis, "probe", http, 1, 1), procs)
        await measure_idle(redis)
        await load(redis, "warm-up", same(redis.ping), w, 1)
        rows.append(await load(redis, "a. Redis PING (request_client)", same(redis.ping), args.ping, 1))
        # The two users' round trips alternate, so that whatever else the box does weighs on both alike.
        pair = [
            ("b. Redis-only paths job, least-privilege users", roundtrip(confined, MACHINE)),
            ("b. Redis-only paths job, default user", roundtrip(unconfined, OPEN_MACHINE)),
        ]
        for _, op in pair:
            await load(redis, "warm-up", same(op), w, 1)
        rows += await load_alternating(redis, pair, args.rt)
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
        rows.append(await load(redis, "e. spawn (Dispatcher.submit)", same(spawn), args.spawn, 1))
        rows.append(await load(redis, "e. HTTP POST spawn (with its rate limits)", same(http_spawn), args.spawn, 1))
        return rows, (await redis.info("server"))["redis_version"]
    finally:
        await confined.close()
        await unconfined.close()


def _fake_cli() -> Any:
    spec = importlib.util.spec_from_file_location("fake_cli", ROOT / "tests" / "fixtures" / "fake_cli.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
