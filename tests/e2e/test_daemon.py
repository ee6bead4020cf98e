"""`machine-hub agent start|status|stop|logs`: the agent as a daemon, for real."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
