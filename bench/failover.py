"""Failover under load: the primary Redis killed, then a hub killed and every hub restarted.

One run starts, on loopback in a temporary folder (bench/ha_stack.py): Redis behind Sentinel (a
primary, a replica, three sentinels with `down-after-milliseconds` 5000, as deploy/compose.ha.yml
sets it), 2 hubs, 1 worker and 20 agents, each process with its own Redis user. Clients
(bench/traffic.py) send path checks, spawns (each with an Idempotency-Key, in a folder of its own)
and machine listings, about 65 requests/s, and record every answer.

  1. Redis: the clients go to both hubs directly. The primary is SIGKILLed mid-run; once the
     sentinels have promoted the replica, the killed node is started again (as a supervisor
     would bring the host back) and rejoins as a replica.
  2. Proxy: the clients go through Caddy (CADDYFILE in bench/proxy.py: the settings of
     deploy/Caddyfile, tuned for Caddy 2.6). One hub is SIGKILLed and started again, then each
     hub in turn is stopped with SIGTERM (its drain) and started again, once ready. A client sends a
     request the proxy answered 502, or that got no answer, once more (a spawn with the same
     Idempotency-Key), since Caddy 2.6 cannot resend a POST.

It prints, for each scenario, what failed and why, and a table of targets, each PASS or FAIL
(the design's for a failover: requests succeed again within 10 s of the kill, under 1 % fail,
none is answered past its deadline, no spawn runs twice, every machine is listed 15 s after the
switch); it exits 1 if one fails. Spawns run twice are counted from the stand-in CLI's own log.
Run `.venv/bin/python bench/failover.py` (about 3 minutes), `--quick` (about 90 s, 6
agents, shorter phases), `--dir DIR` to keep every process's log, or see `--help`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import platform
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import uvloop

from bench.ha_stack import HaStack
from bench.probes import listed, ready, served, served_more, until
from bench.proxy import proxy_attempts, start_proxy
from bench.traffic import Answer, Traffic

HUBS = ["hub-a", "hub-b"]
RATES = {"paths": (5, 12.0), "spawns": (2, 1.0), "lists": (1, 4.0)}  # clients, requests/s each
Check = tuple[str, float, str, str, float]  # what, measured, unit, <= or >=, goal


async def redis_failover(stack: HaStack, args: argparse.Namespace) -> list[Check]:
    traffic = Traffic("redis", [stack.hub_url(h) for h in HUBS], stack.machines, stack.workspace, stack.settings)
    clients = asyncio.create_task(traffic.run(RATES["paths"], RATES["spawns"], RATES["lists"]))
    await asyncio.sleep(args.before)
    stack.check()
    kill_at = time.monotonic()
    killed = stack.topology.kill_primary()
    await asyncio.to_thread(stack.topology.wait_failover, 60)
    switch_at = time.monotonic()
    await asyncio.to_thread(stack.topology.restart, killed)
    replica_at = time.monotonic()
    await asyncio.sleep(max(0.0, kill_at + args.after - time.monotonic()))
    traffic.stop.set()
    await clients
    stack.check()
    answers = traffic.answers
    failed = [a for a in answers if not a.ok]
    print(f"\n## 1. Redis primary killed (SIGKILL), {len(answers)} requests through {len(HUBS)} hubs\n")
    print(f"sentinels promoted the replica {switch_at - kill_at:.2f} s after the kill; the killed node "
          f"was back as a replica {replica_at - kill_at:.2f} s after it\n")  # fmt: skip
    print_failures(failed, kill_at)
    last = max((a.started for a in failed if a.started >= kill_at), default=kill_at)
    again = min((a.ended for a in answers if a.ok and a.started >= last), default=float("inf")) - kill_at
    lists = sorted((a for a in answers if a.kind == "list" and a.ok), key=lambda a: a.started)
    full = next((a.ended for a in lists if a.started >= kill_at and a.count == len(stack.machines)), float("inf"))
    later = next((a for a in lists if a.started >= switch_at + 15), None)
    missing = len(stack.machines) - (later.count if later else 0)
    print(f"all {len(stack.machines)} machines listed again {full - switch_at:.2f} s after the switch; "
          f"longest request {max(a.seconds for a in answers):.2f} s\n")  # fmt: skip
    return [
        ("requests succeed again after the kill", again, " s", "<=", 10.0),
        ("failed requests over the run", 100 * len(failed) / len(answers), " %", "<", 1.0),
        ("failures neither 503 nor a definite job outcome", sum(not a.definite for a in failed), "", "<=", 0),
        ("requests past their deadline", sum(a.code == "past_deadline" for a in answers), "", "<=", 0),
        ("spawns run twice", duplicates(stack), "", "<=", 0),
        ("machines missing 15 s after the switch", missing, "", "<=", 0),
    ]


async def proxy_restarts(stack: HaStack, args: argparse.Namespace) -> list[Check]:
    proxy = start_proxy(stack)
    await until("the proxy to list every machine", lambda: listed(proxy, stack), stack)
    traffic = Traffic("proxy", [proxy], stack.machines, stack.workspace, stack.settings, retries=1)
    started = time.monotonic()
    clients = asyncio.create_task(traffic.run(RATES["paths"], RATES["spawns"], RATES["lists"]))
    events: list[tuple[float, str]] = []

    def mark(what: str) -> None:
        events.append((time.monotonic(), what))

    await asyncio.sleep(args.step)
    mark(f"{HUBS[0]} SIGKILL")
    stack.procs[HUBS[0]].signal(signal.SIGKILL)
    await asyncio.sleep(args.step)
    mark(f"{HUBS[0]} started again")
    await restart(stack, HUBS[0], mark)
    for hub in HUBS:
        mark(f"{hub} SIGTERM")
        stack.procs[hub].signal(signal.SIGTERM)
        await asyncio.to_thread(stack.procs[hub].wait, 30)
        mark(f"{hub} exited; started again")
        await restart(stack, hub, mark)
        await asyncio.sleep(args.step / 2)
    mark("end")
    traffic.stop.set()
    await clients
    stack.check()
    tries = proxy_attempts(stack)
    # A 502 whose attempt failed to connect never reached a hub; any other failure did (a hub may
    # have acted on it).
    reasons = {rid: errors[0] for rid, errors in tries.items()}
    begin = events[0][0]
    rolling = next(at for at, what in events if what.endswith("SIGTERM"))
    phases = {  # a request is in the phase it started in; the first also holds those before the kill
        "hub killed (SIGKILL), started again": (started, rolling),
        "each hub stopped (SIGTERM), started again": (rolling, events[-1][0]),
    }
    print(f"\n## 2. Hubs behind Caddy: {len(traffic.answers)} requests ({len(traffic.attempts)} attempts)\n")
    print("| s | step |\n|---|---|")
    for at, what in events:
        print(f"| {at - begin:.2f} | {what} |")
    print(
        "\n| phase | attempts | 502, never reached a hub | failed after reaching a hub | failed requests | longest s |"
    )
    print("|---|---|---|---|---|---|")
    reached: dict[str, int] = {}
    failed: dict[str, int] = {}
    for name, (start, end) in phases.items():
        tried = [a for a in traffic.attempts if start <= a.started < end]
        bad = [a for a in tried if not a.ok]
        unreached = [a for a in bad if a.status == 502 and "dial tcp" in reasons.get(a.request_id, "")]
        reached[name] = len(bad) - len(unreached)
        failed[name] = sum(not a.ok for a in traffic.answers if start <= a.started < end)
        longest = max((a.seconds for a in traffic.answers if start <= a.started < end), default=0.0)
        print(f"| {name} | {len(tried)} | {len(unreached)} | {reached[name]} | {failed[name]} | {longest:.2f} |")
    print()
    print_failures([a for a in traffic.attempts if not a.ok], begin, reasons)
    kill, restarts = phases
    return [
        ("hub killed: requests failed after one client retry", failed[kill], "", "<=", 0),
        ("rolling restart: failed attempts that reached a hub", reached[restarts], "", "<=", 0),
        ("rolling restart: failed requests", failed[restarts], "", "<=", 0),
        ("requests past their deadline", sum(a.code == "past_deadline" for a in traffic.answers), "", "<=", 0),
        ("spawns run twice (whole run)", duplicates(stack), "", "<=", 0),
    ]


async def restart(stack: HaStack, hub: str, mark: Callable[[str], None]) -> None:
    """Start the hub again; back once the proxy sends it requests (its health check saw it ready)."""
    stack.start_hub(hub)
    url = stack.hub_url(hub)
    await until(f"{hub} to be ready", lambda: ready(url), stack)
    mark(f"{hub} ready")
    before = await served(url)
    await until(f"the proxy to send {hub} requests", lambda: served_more(url, before), stack)
    mark(f"{hub} takes requests from the proxy")


def duplicates(stack: HaStack) -> int:
    return sum(1 for n in stack.launches().values() if n > 1)


def print_failures(failed: list[Answer], since: float, reasons: dict[str, str] | None = None) -> None:
    """One row per kind, status and code: how many, and when (seconds after `since`)."""
    if not failed:
        print("no request failed\n")
        return
    groups: Counter[tuple[str, int, str]] = Counter()
    spans: dict[tuple[str, int, str], list[float]] = {}
    for a in failed:
        why = a.code + (f" ({reasons.get(a.request_id, '')[:60]})" if reasons is not None and a.status == 502 else "")
        key = (a.kind, a.status, why)
        groups[key] += 1
        spans.setdefault(key, []).append(a.started - since)
    print("| failed | status | code | count | started, s after the fault |\n|---|---|---|---|---|")
    for (kind, status, why), n in sorted(groups.items()):
        times = spans[kind, status, why]
        print(f"| {kind} | {status or 'none'} | {why} | {n} | {min(times):.2f} to {max(times):.2f} |")
    print()


def report(checks: list[Check]) -> bool:
    print("| target | measured | goal | result |\n|---|---|---|---|")
    passed = True
    for what, value, unit, op, goal in checks:
        ok = value <= goal if op == "<=" else value < goal if op == "<" else value >= goal
        passed &= ok
        print(f"| {what} | {value:.2f}{unit} | {op} {goal:g}{unit} | {'PASS' if ok else 'FAIL'} |")
    return passed


async def bench(args: argparse.Namespace, tmp: Path) -> bool:
    stack = HaStack(tmp, agents=args.agents, down_after_ms=args.down_after_ms)
    try:
        await stack.start(HUBS)
        for hub in HUBS:
            await until(f"{hub} to list every machine", functools.partial(listed, stack.hub_url(hub), stack), stack)
        print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()} "
              f"{platform.release()}, 1-min load avg {os.getloadavg()[0]:.2f}; {args.agents} agents, "
              f"{len(HUBS)} hubs, 1 worker; sentinel down-after {args.down_after_ms} ms")  # fmt: skip
        passed = True
        if args.scenario in ("redis", "both"):
            passed &= report(await redis_failover(stack, args))
        if args.scenario in ("proxy", "both"):
            passed &= report(await proxy_restarts(stack, args))
        return passed
    finally:
        await asyncio.to_thread(stack.stop)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 6 agents, short phases")
    quick = "--quick" in sys.argv[1:]
    parser.add_argument("--agents", type=int, default=6 if quick else 20, help="agent processes [20; quick 6]")
    parser.add_argument("--down-after-ms", type=int, default=5000, help="sentinel down-after-milliseconds [5000]")
    parser.add_argument("--before", type=float, default=10 if quick else 40, help="s of traffic before the kill")
    parser.add_argument("--after", type=float, default=25 if quick else 80, help="s of traffic after the kill")
    parser.add_argument("--step", type=float, default=3 if quick else 6, help="s between the proxy scenario's steps")
    parser.add_argument("--scenario", choices=("redis", "proxy", "both"), default="both")
    parser.add_argument("--dir", type=Path, help="run in this folder and keep it (every process's log)")
    args = parser.parse_args()
    with contextlib.ExitStack() as cleanup:
        folder = args.dir or Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="mh-failover-")))
        folder.mkdir(parents=True, exist_ok=True)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            passed = runner.run(bench(args, folder))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
