"""`machine-hub dev`: Redis, the hub, the worker and one local agent, each with its own Redis user.

Secure by default, as a deployment should be: the Redis it starts has a password on its default
user and an ACL file, and the hub, the worker and the agent each get the least-privilege user of
core.acl. Every run proves it: the agent's URL is tried on a key of no machine and must be refused.
"""

from __future__ import annotations

import asyncio
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
import msgspec
import redis
from redis.exceptions import NoPermissionError, RedisError

from core.admin import Admin, user_url
from core.connections import request_client
from core.errors import AdminError
from core.keys import Keys
from core.notifications import NOTIFY_FLAGS
from core.settings import Settings
from machine_agent.identity import machine_id as resolve_machine_id
from machine_hub.redis_server import INSTALL_HINT, RedisServer, reachable

ADMIN_FILE = "admin.url"


def start_redis(data: Path) -> tuple[str, RedisServer]:
    """A private redis-server with its data, its ACL file and its admin password in `data`."""
    folder = (data / "redis").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    acl_file, admin_file = folder / "users.acl", data / ADMIN_FILE
    if not acl_file.exists() or not admin_file.exists():
        password = secrets.token_urlsafe(24)
        acl_file.write_text(f"user default on >{password} ~* &* +@all\n")
        _write_private(admin_file, password)
    password = admin_file.read_text().strip()
    args = ("--appendonly", "yes", "--aclfile", str(acl_file), "--notify-keyspace-events", NOTIFY_FLAGS)
    try:
        server = RedisServer(folder, args=args).start()
    except FileNotFoundError:
        raise click.ClickException(INSTALL_HINT) from None
    return user_url(server.url, "default", password), server


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")


def choose_redis(environ: dict[str, str], data: Path) -> tuple[str, RedisServer | None]:
    """REDIS_URL (an admin URL) when set and reachable, else a private redis-server of our own."""
    if "REDIS_URL" in environ:
        url = urlparse(environ["REDIS_URL"])
        if reachable(url.hostname or "127.0.0.1", url.port or 6379):
            return environ["REDIS_URL"], None
        click.echo(f"REDIS_URL {environ['REDIS_URL']} is not reachable; starting a Redis of our own", err=True)
    return start_redis(data)


async def provision(settings: Settings, home: Path) -> tuple[dict[str, str], str]:
    """Service users for hub and worker, a machine user for the local agent: their URLs."""
    client = request_client(settings)
    try:
        admin = Admin(client, settings)
        await admin.configure_notifications(NOTIFY_FLAGS)
        urls = {role: (await admin.add_service(role)).url for role in ("hub", "worker")}
        machine_id, credentials = await admin.add_machine(settings.namespace, resolve_machine_id(home))
        urls["agent"] = credentials.url
        return urls, machine_id
    finally:
        await client.aclose()


def prove_confined(agent_url: str, keys: Keys) -> str:
    """The agent's credentials reach no key beyond its machine's: a read elsewhere must be refused."""
    client = redis.Redis.from_url(agent_url, socket_timeout=2)
    try:
        client.get(keys.owner("any-machine"))
    except NoPermissionError:
        return "the agent's Redis user is refused outside its own machine's keys (NOPERM)"
    except RedisError as exc:
        raise click.ClickException(f"could not check the agent's Redis user: {exc}") from None
    finally:
        client.close()
    raise click.ClickException("the agent's Redis user can read keys of other machines: refusing to run")


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


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops everything this command started, as Ctrl-C does


def run_dev(settings: Settings, *, port: int, data: Path) -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    # Python leaves SIGINT ignored when it started so (a script's background job): Ctrl-C, or
    # kill -INT, must stop what this command starts all the same.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    environ = dict(os.environ)
    admin_url, server = choose_redis(environ, data)
    home = Path(settings.home).expanduser()
    try:
        urls, machine_id = asyncio.run(provision(msgspec.structs.replace(settings, redis_url=admin_url), home))
    except (AdminError, RedisError) as exc:
        if server is not None:
            server.stop()
        raise click.ClickException(f"could not set up the Redis users: {exc}") from None
    click.echo(prove_confined(urls["agent"], Keys(settings.key_prefix)))
    token = settings.cli_api_token or secrets.token_urlsafe(24)
    base = {k: v for k, v in environ.items() if k != "REDIS_URL"} | {"CLI_API_TOKEN": token}
    me = [sys.executable, "-m", "machine_hub"]
    agent = [*me, "agent", "--machine-id", machine_id, "--log-level", "warning"]
    agent_env = {k: v for k, v in base.items() if k != "CLI_API_TOKEN"} | {"REDIS_URL": urls["agent"]}
    processes = [
        subprocess.Popen(
            [*me, "api", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            env=base | {"REDIS_URL": urls["hub"]},
        ),
        subprocess.Popen(agent, env=agent_env),
        subprocess.Popen([*me, "worker", "--log-level", "warning"], env=base | {"REDIS_URL": urls["worker"]}),
    ]
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, token, processes)
        click.echo(f"\nmachine-hub is running at {url} (Redis: {server.url if server else admin_url.split('@')[-1]})")
        click.echo(f"machine {machine_id} is online with its own Redis user")
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
