"""`machine-hub agent start|status|stop|logs`: the agent as a daemon, for real."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx2

from tests.e2e.harness import Stack


def agent_cli(stack: Stack, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = stack.env(HOME=str(home.parent))
    return subprocess.run(
        [sys.executable, "-m", "machine_hub", "agent", "--home", str(home), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_start_status_second_start_and_stop(stack: Stack, tmp_path: Path) -> None:
    home = tmp_path / "agent-home"
    started = agent_cli(stack, home, "--namespace", "daemons", "--machine-id", "d1", "start")
    assert started.returncode == 0, started.stderr
    assert "agent started (pid" in started.stdout
    try:
        stack.wait_online("daemons", "d1")
        status = agent_cli(stack, home, "--namespace", "daemons", "--machine-id", "d1", "status")
        assert status.returncode == 0, status.stderr
        assert "running (pid" in status.stdout and "machine id: d1" in status.stdout
        assert "namespace:  daemons" in status.stdout and "last heartbeat" in status.stdout
        again = agent_cli(stack, home, "--namespace", "daemons", "--machine-id", "d1", "start")
        assert again.returncode == 1 and "an agent already runs with home" in again.stderr
        foreground = agent_cli(stack, home, "--namespace", "daemons", "--machine-id", "d1")
        assert foreground.returncode == 1 and "another agent already runs with home" in foreground.stderr
        assert "online in namespace daemons" in agent_cli(stack, home, "logs").stdout
    finally:
        stopped = agent_cli(stack, home, "stop")
    assert stopped.returncode == 0 and "agent stopped" in stopped.stdout, stopped.stderr
    assert not stack.redis.exists(stack.keys.heartbeat("daemons", "d1"))
    down = agent_cli(stack, home, "--namespace", "daemons", "status")
    assert down.returncode == 1 and "not running" in down.stdout
    assert "no agent runs" in agent_cli(stack, home, "stop").stdout


def test_options_after_the_verb_and_the_status_of_an_agent_started_with_an_id(stack: Stack, tmp_path: Path) -> None:
    home = tmp_path / "agent-home"
    env = stack.env(HOME=str(tmp_path), REDIS_URL=stack.machine_url("daemons", "d2"))

    def agent(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "machine_hub", "agent", *args], env=env, capture_output=True, text=True, timeout=60
        )

    started = agent(
        *("start", "--namespace", "daemons", "--machine-id", "d2", "--home", str(home)),
        *("--label", "role=ci", "--max-sessions", "3"),
    )
    assert started.returncode == 0, started.stderr
    try:
        stack.wait_online("daemons", "d2")
        assert not (home / "machine-id").exists(), "the id was given, none was made"
        for args in (("status", "--home", str(home)), ("--home", str(home), "status")):
            status = agent(*args)
            assert status.returncode == 0, status.stdout + status.stderr
            assert "machine id: d2" in status.stdout and "namespace:  daemons" in status.stdout
            assert "last heartbeat" in status.stdout
        machines = httpx2.get(f"{stack.hubs[0].url}/api/machines", headers=stack.auth("daemons")).json()["machines"]
        (d2,) = [m for m in machines if m["id"] == "d2"]
        assert (d2["labels"], d2["maxSessions"]) == ({"role": "ci"}, 3), "start passed the new options on"
        bad = agent("start", "--home", str(home), "--label", "role")
        assert bad.returncode == 2 and "label 'role' must be key=value" in bad.stderr
    finally:
        stopped = agent("stop", "--home", str(home))
    assert stopped.returncode == 0 and "agent stopped" in stopped.stdout, stopped.stderr
    down = agent("status", "--home", str(home))
    assert down.returncode == 1 and "not running" in down.stdout
