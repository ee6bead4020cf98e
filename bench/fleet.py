"""Fleet benchmark: N simulated machines on one Redis, one hub and one worker (issue 10's table).

For each size it starts a private redis-server (open-files limit raised where allowed,
`maxclients` to match), registers N machines and one probe machine, starts the hub, the worker
and agent host processes (bench/fleet_agents.py: the real `Agent` class, pty launcher, up to
--per-host agents on one event loop each), all with the production default timings, and measures:

  cold start   all agents started at once: time until GET /api/machines lists all of them;
  steady       over --window seconds: Redis commands/s (INFO commandstats), connections and
               memory per machine, the worker's sweep passes (its log), CPU per process;
  requests     p50 of a page of 100 machines, of the same with ?include=offline, of /metrics
               and of /api/jobs; Redis commands per path check, spawn (its job and, apart, its
               rate limits' script), page and scrape, counted while the fleet's hosts and the
               worker are paused (SIGSTOP, about 3 s);
  events       machines the event stream ever said went offline (none of them did);
  Redis restart SIGKILL and start again empty: time until all are listed again, how many are
               missing after 30 s, requests (listings, path checks) past their deadline meanwhile,
               agents that crashed.

It prints one markdown table (a column per size, PASS or FAIL beside each value with a target)
and notes on what limited the box; it exits 1 if a target fails.
Run `.venv/bin/python bench/fleet.py` (1,000, 3,000 and 10,000; about 12 minutes), `--quick`
(1,000 only, about 2 minutes) or `--sizes 20,500`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import fleet_report
from bench.fleet_agents import machine_id
from bench.fleet_probes import (
    Hub,
    Outage,
    Sweeps,
    clients,
    commands,
    delta,
    heartbeats,
    memory,
    offline_events,
    ping_p50_ms,
)
from bench.fleet_stack import NS, PROBE, SECRET, FleetStack, raise_open_files
from core.keys import Keys

Result = dict[str, object]


async def until_listed(hub: Hub, stack: FleetStack, timeout_s: float) -> tuple[float | None, int, int]:
    """Seconds until every machine is listed (None if not within `timeout_s`), how many were listed
    at 30 s (or at the end, if sooner), and how many heartbeats Redis held then."""
    start, redis = time.monotonic(), stack.client()
    at_30 = beating = -1
    try:
        while (elapsed := time.monotonic() - start) < timeout_s:
            stack.procs.check()
            listed = await hub.listed()
            if elapsed <= 30 or at_30 < 0:
                at_30, beating = listed, await heartbeats(redis)
            if listed == stack.machines:
                return time.monotonic() - start, listed, beating
            await asyncio.sleep(max(0.5, stack.size / 5000))  # a walk of 10,000 is 11 pages, 50,000 commands
        return None, at_30, beating
    finally:
        await redis.aclose()


LIMIT_COMMANDS = ("incr", "decr", "pexpire", "zcard")  # core.ratelimits.TAKE's, after its EVALSHA


async def per_request(hub: Hub, stack: FleetStack, tmp: Path) -> Result:
    """Redis commands per request, with the fleet's hosts and the worker paused."""
    redis, out = stack.client(), Result()
    paused = [*stack.fleet_hosts(), "worker"]
    stack.signal(paused, signal.SIGSTOP)
    try:
        before = await commands(redis)
        await asyncio.sleep(2.0)
        idle_per_s = sum(delta(await commands(redis), before).values()) / 2.0
        checks: dict[str, tuple[str, str, object, int]] = {
            "paths": ("POST", f"/api/machines/{PROBE}/paths/exists", {"paths": [str(tmp)]}, 20),
            "spawn": ("POST", f"/api/machines/{PROBE}/spawn", None, 5),
            "page": ("GET", "/api/machines?limit=100", None, 5),
            "metrics": ("GET", "/metrics", None, 3),  # 1.1 s apart: the hub reuses a fleet read for 1 s
            "jobs": ("GET", "/api/jobs", None, 5),
        }
        for name, (method, path, body, n) in checks.items():
            before, t = await commands(redis), time.monotonic()
            for i in range(n):
                if name == "spawn":
                    body = {"directory": str(tmp / "spawns" / str(i)), "agent": "claude"}
                if name == "metrics":
                    await asyncio.sleep(1.1)
                response = await hub.http.request(method, path, json=body)
                if response.status_code != 200 or b'"success":false' in response.content:
                    raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:300]}")
            used_by = delta(await commands(redis), before)
            used = sum(used_by.values()) - idle_per_s * (time.monotonic() - t)
            out[f"cmds_{name}"] = max(0.0, used / n)
            if name == "spawn":  # what its rate limits' script ran (no other part of a spawn sends these)
                out["cmds_spawn_limits"] = limits = 1 + sum(used_by.get(c, 0) for c in LIMIT_COMMANDS) / n
                out["cmds_spawn_job"] = max(0.0, used / n - limits)
    finally:
        stack.signal(paused, signal.SIGCONT)
        await redis.aclose()
    return out


async def measure(stack: FleetStack, args: argparse.Namespace, tmp: Path) -> Result:
    out: Result = {"size": stack.size}
    await stack.start()
    hub = Hub(f"http://127.0.0.1:{stack.port}", SECRET)
    redis = stack.client()
    keys = Keys(stack.settings.key_prefix)
    try:
        await hub.wait_ready(stack.procs.check)
        out["maxclients"] = int((await redis.config_get("maxclients"))["maxclients"])
        await stack.go()
        out["cold_s"], out["cold_listed"], out["cold_beating"] = await until_listed(hub, stack, args.cold_timeout)
        await asyncio.sleep(args.settle)  # start-up connections close after two idle heartbeats
        _, log_at = Sweeps.read(stack.tmp / "worker.log")
        cmd0, cpu0, t0 = await commands(redis), stack.cpu(), time.monotonic()
        load0 = os.getloadavg()[0]
        await asyncio.sleep(args.window)
        used = delta(await commands(redis), cmd0)
        span, cpu1 = time.monotonic() - t0, stack.cpu()
        out["cmds_per_machine_s"] = sum(used.values()) / span / stack.machines
        out["top_cmds"] = sorted(used.items(), key=lambda kv: -kv[1])[:5]
        out["cpu"] = {k: (cpu1[k] - cpu0.get(k, 0.0)) / span for k in cpu1}
        out["load"] = (load0, os.getloadavg()[0])
        out["conns_per_machine"] = (await clients(redis) - 1) / stack.machines
        out["memory_per_machine"] = await memory(redis) / stack.machines
        out["sweeps"], _ = Sweeps.read(stack.tmp / "worker.log", log_at)
        out["cold_sweeps"], _ = Sweeps.read(stack.tmp / "worker.log")
        out["false_offline"] = len(await offline_events(redis, keys, NS))  # before the fleet is paused
        for target in (PROBE, machine_id(0)):  # jobs on two machines for /api/jobs
            await hub.http.post(f"/api/machines/{target}/paths/exists", json={"paths": ["/tmp"]})
        out |= await per_request(hub, stack, tmp)
        out["page_ms"] = await hub.p50_ms("GET", "/api/machines?limit=100", args.samples)
        out["offline_page_ms"] = await hub.p50_ms("GET", "/api/machines?limit=100&include=offline", args.samples)
        out["ping_ms"] = await ping_p50_ms(redis, args.samples)
        out["metrics_ms"] = await hub.p50_ms("GET", "/metrics", args.samples)
        out["jobs_ms"] = await hub.p50_ms("GET", "/api/jobs", args.samples)
        out |= await restart(hub, stack, args)
    except Exception as exc:  # a phase that failed ends this size; the table shows what was measured
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        out["crashed"] = sum(int(s.get("crashed", 0)) for s in stack.statuses())
        await hub.aclose()
        await redis.aclose()
        await stack.stop()
    return out


async def restart(hub: Hub, stack: FleetStack, args: argparse.Namespace) -> Result:
    outage, stop = Outage(), asyncio.Event()
    traffic = asyncio.create_task(outage.run(hub, machine_id(0), stop, stack.settings.paths_timeout_s))
    await asyncio.sleep(1.0)
    await asyncio.to_thread(stack.restart_redis)
    try:
        back_s, at_30, beating = await until_listed(hub, stack, args.restart_timeout)
    finally:
        stop.set()
        await traffic
    return {
        "restart_s": back_s,
        "restart_listed": at_30,
        "restart_beating": beating,
        "restart_missing": stack.machines - at_30,
        "outage": outage,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 machines only")
    parser.add_argument("--sizes", type=lambda s: [int(n) for n in s.split(",")], help="[1000,3000,10000]")
    parser.add_argument("--per-host", type=int, default=2500, help="agents per host process [2500]")
    parser.add_argument("--window", type=float, default=30.0, help="steady-state window, seconds [30]")
    parser.add_argument("--settle", type=float, default=15.0, help="wait after the cold start, seconds [15]")
    parser.add_argument("--samples", type=int, default=20, help="requests per latency row [20]")
    parser.add_argument("--cold-timeout", type=float, default=90.0, help="give up the cold start after [90] s")
    parser.add_argument("--restart-timeout", type=float, default=60.0, help="and the restart after [60] s")
    parser.add_argument("--dir", type=Path, help="keep every process's log in this folder")
    args = parser.parse_args()
    sizes = args.sizes or ([1000] if args.quick else [1000, 3000, 10000])
    limit = raise_open_files(4 * max(sizes) + 4096)
    results = []
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        for size in sizes:
            with tempfile.TemporaryDirectory(prefix=f"mh-fleet-{size}-") as name:
                tmp = args.dir / str(size) if args.dir else Path(name)
                tmp.mkdir(parents=True, exist_ok=True)
                results.append(runner.run(measure(FleetStack(tmp, size, args.per_host), args, tmp)))
    print(f"machine: nproc {os.cpu_count()}, Python {platform.python_version()}, {platform.system()}",
          f"{platform.release()}, open-files limit {limit}, load avg now {os.getloadavg()[0]:.2f}")  # fmt: skip
    return 0 if fleet_report.report(results) else 1


if __name__ == "__main__":
    sys.exit(main())
