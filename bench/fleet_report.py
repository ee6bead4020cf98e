"""The table bench/fleet.py prints: one column per fleet size, PASS or FAIL beside each value with a target,
and notes on where the box (cores, file descriptors), not the design, set the limit."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from bench.fleet_probes import Outage, Sweeps

R = dict[str, Any]
Row = tuple[str, str, Callable[[R], str], Callable[[R], bool | None]]


def _num(key: str, fmt: str) -> Callable[[R], str]:
    return lambda r: fmt.format(r[key])


def _at_most(key: str, goal: float) -> Callable[[R], bool | None]:
    return lambda r: r[key] is not None and r[key] <= goal


def _seconds(key: str, listed_key: str) -> Callable[[R], str]:
    def show(r: R) -> str:
        if r[key] is None:
            return f"not within the wait ({r[listed_key]} of {r['size'] + 1} listed at 30 s)"
        return f"{r[key]:.1f} s"

    return show


def _sweeps(key: str) -> Callable[[R], str]:
    def show(r: R) -> str:
        sweeps: Sweeps = r[key]
        locked = f", {sweeps.locked} found the lock held" if sweeps.locked else ""
        return sweeps.line() + locked

    return show


def _outage(r: R) -> str:
    outage: Outage = r["outage"]
    answers = ", ".join(f"{status or 'no answer'}: {n}" for status, n in sorted(outage.statuses.items()))
    late = ", ".join(f"{n} {kind}" for kind, n in outage.late.items()) or "none late"
    return f"{outage.hung} of {outage.sent} ({late}; {answers})"


def _cpu(r: R) -> str:
    cpu = r["cpu"]
    return " / ".join(f"{cpu.get(k, 0.0):.2f}" for k in ("redis", "agents", "worker", "hub"))


def _flat(key: str, first: list[float]) -> Callable[[R], bool | None]:
    """O(1) across sizes: no more than the smallest fleet's count, give or take 10 % + 2."""
    return lambda r: r[key] <= first[0] * 1.1 + 2 if first else None


def rows(results: list[R]) -> list[Row]:
    smallest = min(results, key=lambda r: r["size"])
    first = {k: [float(smallest[k])] if k in smallest else [] for k in ("cmds_page", "cmds_metrics", "cmds_jobs")}
    return [
        ("Redis commands/s per idle machine (agents + worker)", "<= 0.5", _num("cmds_per_machine_s", "{:.2f}"),
         _at_most("cmds_per_machine_s", 0.5)),
        ("Redis connections per machine", "<= 1.1", _num("conns_per_machine", "{:.3f}"),
         _at_most("conns_per_machine", 1.1)),
        ("Redis memory per machine", "", lambda r: f"{r['memory_per_machine'] / 1024:.1f} KB", lambda r: None),
        ("worker sweep pass, steady", "max <= 1 s", _sweeps("sweeps"),
         lambda r: bool(r["sweeps"].seconds) and max(r["sweeps"].seconds) <= 1.0),
        ("worker sweep pass, whole run to here (cold start included)", "", _sweeps("cold_sweeps"), lambda r: None),
        ("GET /api/machines?limit=100 p50", "<= 20 ms", _num("page_ms", "{:.1f} ms"), _at_most("page_ms", 20)),
        ("?limit=100&include=offline p50", "<= 20 ms", _num("offline_page_ms", "{:.1f} ms"),
         _at_most("offline_page_ms", 20)),
        ("Redis PING p50, right after the pages (a page is two round trips and 402 commands)", "",
         _num("ping_ms", "{:.2f} ms"), lambda r: None),
        ("/metrics p50", "", _num("metrics_ms", "{:.1f} ms"), lambda r: None),
        ("GET /api/jobs p50 (jobs on 2 machines)", "", _num("jobs_ms", "{:.1f} ms"), lambda r: None),
        ("Redis commands per page of 100 machines", "O(page)", _num("cmds_page", "{:.0f}"),
         _flat("cmds_page", first["cmds_page"])),
        ("Redis commands per /metrics scrape", "O(1)", _num("cmds_metrics", "{:.1f}"),
         _flat("cmds_metrics", first["cmds_metrics"])),
        ("Redis commands per /api/jobs page", "O(limit)", _num("cmds_jobs", "{:.1f}"),
         _flat("cmds_jobs", first["cmds_jobs"])),
        ("Redis commands per path check", "<= 12", _num("cmds_paths", "{:.1f}"), _at_most("cmds_paths", 12)),
        ("Redis commands per spawn (HTTP), the job", "<= 20", _num("cmds_spawn_job", "{:.1f}"),
         _at_most("cmds_spawn_job", 20)),
        ("Redis commands per spawn (HTTP), its rate limits' script", "", _num("cmds_spawn_limits", "{:.1f}"),
         lambda r: None),
        ("cold start: all listed online", "<= 30 s", _seconds("cold_s", "cold_listed"), _at_most("cold_s", 30)),
        ("cold start: heartbeats in Redis at 30 s (or when all were listed)", "", _num("cold_beating", "{}"),
         lambda r: None),
        ("machines ever marked offline (none went)", "0", _num("false_offline", "{}"),
         lambda r: r["false_offline"] == 0),
        ("Redis killed and restarted: all listed again", "<= 30 s", _seconds("restart_s", "restart_listed"),
         _at_most("restart_s", 30)),
        ("restart: heartbeats in Redis at 30 s (or when all were listed)", "", _num("restart_beating", "{}"),
         lambda r: None),
        ("missing 30 s after the restart", "0", _num("restart_missing", "{}"), lambda r: r["restart_missing"] == 0),
        ("requests past their deadline meanwhile", "0", _outage, lambda r: r["outage"].hung == 0),
        ("agents crashed", "0", _num("crashed", "{}"), lambda r: r["crashed"] == 0),
        ("cores busy, steady: redis / agents / worker / hub", "", _cpu, lambda r: None),
        ("1-min load average, start / end of steady window", "",
         lambda r: f"{r['load'][0]:.2f} / {r['load'][1]:.2f}", lambda r: None),
    ]  # fmt: skip


def report(results: list[R]) -> bool:
    passed = True
    print("\n| measurement | " + " | ".join(f"{r['size']:,}" for r in results) + " | target |")
    print("|---|" + "---|" * len(results) + "---|")
    for label, goal, show, verdict in rows(results):
        cells = []
        for r in results:
            try:
                ok, text = verdict(r), show(r)
            except KeyError:  # not measured: the run of this size failed before
                ok, text = None, "n/a"
            passed = passed and ok is not False
            cells.append(text + ("" if ok is None else " PASS" if ok else " FAIL"))
        print(f"| {label} | " + " | ".join(cells) + f" | {goal} |")
    print()
    passed = passed and not any("error" in r for r in results)
    for r in results:
        for note in notes(r):
            print(f"- {r['size']:,}: {note}")
    return passed


def notes(r: R) -> list[str]:
    found = [f"failed: {r['error']}"] if "error" in r else []
    if "cpu" not in r:
        return found
    busy, cores = sum(r["cpu"].values()), os.cpu_count() or 1
    if busy >= 0.8 * cores:
        found.append(f"the box's CPU was the limit: the processes kept {busy:.2f} of {cores} cores busy when idle")
    if r["maxclients"] < 2 * r["size"]:
        found.append(
            f"Redis got maxclients {r['maxclients']} (open-files limit): one connection per agent, and a"
            f" second for at most {max(0, r['maxclients'] - r['size']):,} agents working at once"
        )
    found.append("top commands, steady: " + ", ".join(f"{k} {n}" for k, n in r["top_cmds"]))
    return found
