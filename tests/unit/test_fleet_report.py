"""The table of bench/fleet.py: every row for every size, and a failed target fails the run."""

from __future__ import annotations

from typing import Any

import pytest

from bench.fleet_probes import Outage, Sweeps
from bench.fleet_report import report, rows


def result(size: int, **changes: Any) -> dict[str, Any]:
    found: dict[str, Any] = {
        "size": size,
        "maxclients": 2 * size + 2000,
        "cmds_per_machine_s": 0.45,
        "conns_per_machine": 1.01,
        "memory_per_machine": 14_000,
        "sweeps": Sweeps(seconds=[0.01, 0.05]),
        "cold_sweeps": Sweeps(seconds=[0.4], locked=1),
        "page_ms": 12.0,
        "offline_page_ms": 13.0,
        "ping_ms": 0.1,
        "metrics_ms": 3.0,
        "jobs_ms": 2.0,
        "cmds_page": 502,
        "cmds_metrics": 1.0,
        "cmds_jobs": 6.0,
        "cmds_paths": 6.0,
        "cmds_spawn_job": 19.0,
        "cmds_spawn_limits": 4.0,
        "cold_s": 3.0,
        "cold_listed": size + 1,
        "false_offline": 0,
        "restart_s": 8.0,
        "restart_missing": 0,
        "restart_listed": size + 1,
        "cold_beating": size + 1,
        "restart_beating": size + 1,
        "outage": Outage(sent=10, statuses={200: 10}),
        "crashed": 0,
        "cpu": {"redis": 0.1, "agents": 0.5, "worker": 0.05, "hub": 0.01},
        "load": (1.0, 1.1),
        "top_cmds": [("set", 100)],
    }
    return found | changes


def test_every_row_is_printed_for_every_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert report([result(1000), result(3000)])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + len(rows([result(1000)]))
    assert all(line.count("|") == 5 for line in lines)
    assert "FAIL" not in "".join(lines)


def test_a_failed_target_fails_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert not report([result(1000), result(10_000, cold_s=None, cold_listed=9000, cmds_metrics=500.0)])
    out = capsys.readouterr().out
    assert "not within the wait (9000 of 10001 listed at 30 s) FAIL" in out
    assert "500.0 FAIL" in out  # /metrics grew with the fleet


def test_a_busy_box_is_named_as_the_limit(capsys: pytest.CaptureFixture[str]) -> None:
    report([result(10_000, cpu={"redis": 0.4, "agents": 1.4, "worker": 0.1, "hub": 0.0})])
    assert "the box's CPU was the limit" in capsys.readouterr().out


def test_a_size_that_failed_shows_what_it_measured_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    partial = {k: v for k, v in result(10_000).items() if k in ("size", "maxclients", "crashed")}
    assert not report([result(1000), partial | {"error": "TimeoutError: the hub"}])
    out = capsys.readouterr().out
    assert "| n/a |" in out.replace(" PASS", "") and "- 10,000: failed: TimeoutError: the hub" in out
