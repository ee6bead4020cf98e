"""`machine-hub dev`: find or start Redis, then run the hub, one local agent and the worker until Ctrl-C."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import click

from core.settings import Settings
from machine_hub.redis_server import INSTALL_HINT, RedisServer, reachable

LOCAL_PORT = 6379


def choose_redis(environ: dict[str, str], data: Path, local_port: int = LOCAL_PORT) -> tuple[str, RedisServer | None]:
    """REDIS_URL when set and reachable, else a local Redis on 6379, else a private redis-server."""
    if "REDIS_URL" in environ:
        url = urlparse(environ["REDIS_URL"])
        if reachable(url.hostname or "127.0.0.1", url.port or 6379):
            return environ["REDIS_URL"], None
        click.echo(f"REDIS_URL {environ['REDIS_URL']} is not reachable; looking for another Redis", err=True)
    if reachable("127.0.0.1", local_port):
        return f"redis://127.0.0.1:{local_port}/0", None
    try:
        server = RedisServer(data / "redis", args=("--appendonly", "yes")).start()
    except FileNotFoundError:
        raise click.ClickException(INSTALL_HINT) from None
    return server.url, server


def wait_ready(url: str, token: str, processes: list[subprocess.Popen[bytes]], timeout_s: float = 30.0) -> None:
    """Until the hub answers and lists at least one machine (the local agent)."""
    deadline = time.monotonic() + timeout_s
    request = urllib.request.Request(f"{url}/api/machines", headers={"Authorization": f"Bearer {token}"})
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            raise click.ClickException("a machine-hub process exited during start-up; see its output above")
        try:
            with urllib.request.urlopen(request, timeout=1) as response:
                if json.load(response)["machines"]:
                    return
        except (urllib.error.URLError, OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise click.ClickException("the hub did not become ready within 30 s")


def run_dev(settings: Settings, *, port: int, data: Path) -> None:
    environ = dict(os.environ)
    redis_url, server = choose_redis(environ, data)
    token = settings.cli_api_token or secrets.token_urlsafe(24)
    env = {**environ, "REDIS_URL": redis_url, "CLI_API_TOKEN": token}
    me = [sys.executable, "-m", "machine_hub"]
    processes = [
        subprocess.Popen([*me, "api", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"], env=env),
        subprocess.Popen([*me, "agent", "--log-level", "warning"], env=env),
        subprocess.Popen([*me, "worker", "--log-level", "warning"], env=env),
    ]
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, token, processes)
        click.echo(f"\nmachine-hub is running at {url} (Redis: {redis_url})")
        click.echo(f"token: {token}")
        click.echo(f"try:   curl -s -H 'Authorization: Bearer {token}' {url}/api/machines")
        click.echo("Ctrl-C stops everything this command started.")
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
        raise click.ClickException("a machine-hub process exited; stopping the rest")
    except KeyboardInterrupt:
        click.echo("\nstopping")
    finally:
        for p in processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in processes:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        if server is not None:
            server.stop()
