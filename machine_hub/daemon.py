"""`machine-hub agent start|stop|status|logs`: the agent as a background daemon, one per home."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click
import msgspec

from core.connections import REDIS_ERRORS, request_client
from core.keys import Keys
from core.registry import decode_beat
from core.settings import Settings
from machine_agent.home_lock import holder
from machine_agent.identity import ID_FILE, read_running
from machine_agent.private_files import append_private, private_dir
from machine_agent.sessions import SessionStore

LOG_FILE = "agent.log"
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 30.0


def _wait(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def start(home: Path, agent_args: list[str]) -> None:
    """Start `machine-hub agent <agent_args>` detached, logging to <home>/agent.log."""
    running = holder(home)
    if running is not None:
        raise click.ClickException(f"an agent already runs with home {home} (pid {running})")
    private_dir(home)
    log = home / LOG_FILE
    with append_private(log) as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "machine_hub", "agent", "--home", str(home), *agent_args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    if not _wait(lambda: holder(home) == process.pid or process.poll() is not None, START_TIMEOUT_S):
        raise click.ClickException(f"the agent did not start within {START_TIMEOUT_S:g}s; see {log}")
    if process.poll() is not None:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise click.ClickException(f"the agent exited at once: {tail[0]}")
    click.echo(f"agent started (pid {process.pid}); logs: {log}")


def stop(home: Path) -> None:
    pid = holder(home)
    if pid is None:
        click.echo(f"no agent runs with home {home}")
        return
    os.kill(pid, signal.SIGTERM)
    if not _wait(lambda: holder(home) is None, STOP_TIMEOUT_S):
        raise click.ClickException(f"the agent (pid {pid}) did not stop within {STOP_TIMEOUT_S:g}s")
    click.echo(f"agent stopped (pid {pid})")


def status(settings: Settings, home: Path) -> bool:
    """Print the agent's state; True when it runs and its heartbeat is live (a health check).

    A running agent says who it is in <home>/agent.json (its --machine-id and --namespace
    included); without one running, the options, the environment and the id file say."""
    pid = holder(home)
    running = read_running(home) if pid else None
    if running is not None and running.pid == pid:
        settings = msgspec.structs.replace(
            settings, machine_id=running.machine_id, namespace=running.namespace, key_prefix=running.key_prefix
        )
    id_file = home / ID_FILE
    machine_id = settings.machine_id or (id_file.read_text().strip() if id_file.exists() else "(none yet)")
    click.echo(f"agent:      {f'running (pid {pid})' if pid else 'not running'}")
    click.echo(f"machine id: {machine_id}")
    click.echo(f"namespace:  {settings.namespace}")
    live, redis_line = asyncio.run(_redis_status(settings, machine_id))
    click.echo(f"redis:      {redis_line}")
    sessions = SessionStore(home).running()
    click.echo(f"sessions:   {len(sessions)}")
    for record in sessions:
        click.echo(f"  {record.session_id}  {record.agent:<8}  pid {record.pid:<7}  {record.directory}")
    return pid is not None and live


async def _redis_status(settings: Settings, machine_id: str) -> tuple[bool, str]:
    redis = request_client(settings)
    key = Keys(settings.key_prefix).heartbeat(settings.namespace, machine_id)
    try:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.pttl(key)
            raw, pttl = await pipe.execute()
    except REDIS_ERRORS as exc:
        return False, f"unreachable ({exc})"
    finally:
        await redis.aclose()
    beat = decode_beat(raw)
    if beat is None or int(pttl) <= 0:
        return False, "reachable; no live heartbeat (the machine is offline)"
    age_s = max(0, beat[1].ttl_ms - int(pttl)) / 1000
    return True, f"reachable; last heartbeat {age_s:.1f}s ago"


def logs(home: Path, follow: bool) -> None:
    log = home / LOG_FILE
    if not log.exists():
        raise click.ClickException(f"no log at {log}: the agent was never started with `agent start`")
    with log.open(errors="replace") as lines:
        click.echo(lines.read(), nl=False)
        while follow:
            line = lines.readline()
            if line:
                click.echo(line, nl=False)
            else:
                time.sleep(0.2)
