"""Real processes for end-to-end tests: redis-server, hubs and agents, each logging to a file.

Processes get their configuration the way users give it, through the environment
(Settings.to_env), with short heartbeats and deadlines so faults show up in seconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import redis

from core.admin import Admin
from core.connections import request_client
from core.keys import Keys
from core.notifications import NOTIFY_FLAGS
from core.settings import Settings
from machine_hub.redis_server import RedisServer, free_port

SECRET = "e2e-secret"
ONLINE_LINE = " online in namespace "  # the agent logs it after its first heartbeat
FIXTURES = Path(__file__).parent.parent / "fixtures"


def load_fake_cli() -> Any:
    spec = importlib.util.spec_from_file_location("fake_cli", FIXTURES / "fake_cli.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wait_until(check: Callable[[], object], timeout_s: float = 10.0, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy; fail with `what` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)


T = TypeVar("T")


def admin(settings: Settings, use: Callable[[Admin], Awaitable[T]]) -> T:
    """Run an operator action with the admin URL of `settings` (the test's Redis has no password)."""

    async def go() -> T:
        client = request_client(settings)
        try:
            return await use(Admin(client, settings))
        finally:
            await client.aclose()

    # In a thread of its own: a test may run inside an event loop (Playwright's sync API does).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, go()).result()


async def setup_services(a: Admin) -> dict[str, str]:
    """What `machine-hub setup` does: the service users, heartbeat notifications, the scripts."""
    await a.configure_notifications(NOTIFY_FLAGS)
    await a.scripts.load()
    return {role: (await a.add_service(role)).url for role in ("hub", "worker", "tokens")}


async def add_machine(a: Admin, namespace: str, machine_id: str) -> str:
    return (await a.add_machine(namespace, machine_id))[1].url


def acl_redis_server(folder: Path, *args: str) -> RedisServer:
    """A redis-server as deployments run it: users kept in an ACL file, heartbeat notifications on.

    Its default user has no password: the tests' own client is the admin."""
    folder.mkdir(parents=True, exist_ok=True)
    acl_file = folder / "users.acl"
    acl_file.touch()
    return RedisServer(folder, args=("--aclfile", str(acl_file), "--notify-keyspace-events", NOTIFY_FLAGS, *args))


def fast_settings(redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        redis_url=redis_url,
        cli_api_token=SECRET,
        key_prefix=f"e2e-{uuid.uuid4().hex[:8]}",
        redis_connect_timeout_s=0.5,
        redis_socket_timeout_s=1.0,
        block_s=1.0,
        reconnect_max_s=0.2,
        heartbeat_interval_s=0.2,
        heartbeat_ttl_s=1.0,
        spawn_claim_timeout_s=2.0,
        spawn_timeout_s=4.0,
        paths_timeout_s=2.0,
        spawn_settle_s=0.3,
        session_stop_grace_s=1.0,
        shutdown_drain_s=0.2,
        sweep_interval_s=1.0,
        offline_recheck_s=2.0,
        tmux_socket=f"mh-test-{uuid.uuid4().hex[:8]}",
        # Tests spawn far faster than people, all with one token; test_limits.py sets the limits
        # it proves on hubs of its own.
        spawns_per_minute_namespace=0,
        spawns_per_minute_token=0,
    )
    values.update(overrides)
    return Settings(**values)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def stop(self, timeout_s: float = 10.0) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"{self.name} did not stop on SIGTERM within {timeout_s}s") from None

    def kill(self) -> None:
        if self.alive():
            self.popen.kill()
        self.popen.wait()


@dataclass
class Stack:
    """One Redis and the hubs and agents a test starts against it.

    `redis_server` is killed with the stack; None when the test's fixture owns the Redis (a
    Sentinel deployment or a Cluster, tests/ha/stack.py)."""

    tmp: Path
    redis_server: RedisServer | None
    settings: Settings
    processes: list[Process] = field(default_factory=list)
    hubs: list[Process] = field(default_factory=list)
    startup_timeout_s = 20.0  # how long a process may take to be ready (import, connect, first beat)

    def __post_init__(self) -> None:
        self.keys = Keys(self.settings.key_prefix)
        # The test's own client holds the admin URL; every process gets the user of its role.
        self.redis = self.data_client()
        self.arq_redis = self.redis  # where the worker's health key is: arq's Redis
        self.bin = self.tmp / "bin"
        load_fake_cli().install(self.bin)
        self.cli_log = self.tmp / "cli.jsonl"
        self.urls: dict[str, str] = admin(self.settings, setup_services)
        self.machine_urls: dict[tuple[str, str], str] = {}

    def data_client(self) -> Any:
        """The test's synchronous admin client of the Redis holding machine-hub's keys."""
        return redis.Redis.from_url(self.settings.redis_url, socket_timeout=5)

    def env(self, **extra: str) -> dict[str, str]:
        """A process's environment: the settings (REDIS_URL: the admin URL) and the fake CLIs."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MACHINE_HUB_")}
        env.update(self.settings.to_env())
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["FAKE_CLI_LOG"] = str(self.cli_log)
        env["FAKE_CLI_LIFETIME"] = "60"
        env.update(extra)
        return env

    def role_env(self, role: str, **extra: str) -> dict[str, str]:
        """`env` with the Redis user of a role: hub, worker or tokens."""
        return self.env(REDIS_URL=self.urls[role], **extra)

    def machine_url(self, namespace: str, machine_id: str) -> str:
        """The machine's own Redis URL (`machine add` once per machine, as an operator would)."""
        if (namespace, machine_id) not in self.machine_urls:
            self.machine_urls[namespace, machine_id] = admin(
                self.settings, lambda a: add_machine(a, namespace, machine_id)
            )
        return self.machine_urls[namespace, machine_id]

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> Process:
        log = self.tmp / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "machine_hub", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.tmp,
            )
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def cli_path(self, *names: str) -> str:
        """A PATH on which only these fake CLIs are installed (and the system's commands)."""
        folder = self.tmp / f"bin-{'-'.join(names) or 'none'}"
        if names and not folder.exists():
            load_fake_cli().install(folder, names=names)
        return os.pathsep.join([*([str(folder)] if names else []), "/usr/local/bin", "/usr/bin", "/bin"])

    def start_hub(self, **env: str) -> Process:
        port = free_port()
        hub = self._spawn(
            f"hub-{port}", ["api", "--port", str(port), "--log-level", "warning"], self.role_env("hub", **env)
        )
        hub.url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if not hub.alive():
                raise AssertionError(f"hub exited:\n{hub.log_text()}")
            try:
                return httpx2.get(f"{hub.url}/api/machines", headers=self.auth(), timeout=1).status_code == 200
            except httpx2.TransportError:
                return False

        wait_until(up, self.startup_timeout_s, "the hub to answer")
        return hub

    def start_worker(self, name: str = "", *, wait: bool = True, **env: str) -> Process:
        """A worker with the worker's own Redis user; by default, once its health key is there."""
        name = name or f"worker-{len(self.processes)}"
        worker = self._spawn(name, ["worker", "--log-level", "info"], self.role_env("worker", **env))
        health = f"{self.settings.key_prefix}:worker:health-check"

        def up() -> bool:
            if not worker.alive():
                raise AssertionError(f"worker exited:\n{worker.log_text()}")
            return bool(self.arq_redis.exists(health))

        if wait:
            wait_until(up, self.startup_timeout_s, "the worker to start")
        return worker

    def run_cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """`machine-hub <args>` as a user runs it here (REDIS_URL: the admin URL), to its end."""
        return subprocess.run(
            [sys.executable, "-m", "machine_hub", *args],
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.tmp,
        )

    def issue_token(self, namespace: str) -> str:
        """A new issued token for `namespace`, made with `machine-hub token create` as a user would."""
        created = subprocess.run(
            [sys.executable, "-m", "machine_hub", "token", "create", "--namespace", namespace],
            env=self.env(),
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return created.stdout.strip()

    def revoke_token(self, namespace: str, token: str) -> None:
        subprocess.run(
            [sys.executable, "-m", "machine_hub", "token", "revoke", "--namespace", namespace, token],
            env=self.env(),
            capture_output=True,
            check=True,
            timeout=30,
        )

    def start_agent(
        self, machine_id: str, namespace: str = "default", *, wait: bool = True, args: tuple[str, ...] = (), **env: str
    ) -> Process:
        """An agent with the machine's own URL; `args` are more `machine-hub agent` options."""
        home = self.tmp / "agents" / f"{namespace}-{machine_id}"
        agent_env = self.env(HOME=str(self.tmp / "home"), REDIS_URL=self.machine_url(namespace, machine_id), **env)
        (self.tmp / "home").mkdir(exist_ok=True)
        log = self.tmp / f"agent-{namespace}-{machine_id}.log"  # appended to by a restarted agent too
        beats_before = log.read_text(errors="replace").count(ONLINE_LINE) if log.exists() else 0
        agent = self._spawn(
            f"agent-{namespace}-{machine_id}",
            [
                *("agent", "--namespace", namespace, "--machine-id", machine_id, "--home", str(home)),
                *("--log-level", "info", *args),
            ],
            agent_env,
        )
        if wait:
            self.wait_online(namespace, machine_id, agent)
            # A restarted agent's predecessor may still hold the heartbeat: wait for this one's own.
            wait_until(lambda: agent.log_text().count(ONLINE_LINE) > beats_before, 20, f"agent {machine_id} online")
        return agent

    def wait_online(self, namespace: str, machine_id: str, agent: Process | None = None) -> None:
        def online() -> bool:
            if agent is not None and not agent.alive():
                raise AssertionError(f"agent exited:\n{agent.log_text()}")
            return bool(self.redis.exists(self.keys.heartbeat(namespace, machine_id)))

        wait_until(online, self.startup_timeout_s, f"machine {machine_id} to come online")

    def auth(self, namespace: str | None = None) -> dict[str, str]:
        token = SECRET if namespace is None else f"{SECRET}:{namespace}"
        return {"Authorization": f"Bearer {token}"}

    def launches(self) -> list[dict[str, Any]]:
        if not self.cli_log.exists():
            return []
        return [json.loads(line) for line in self.cli_log.read_text().splitlines() if line.strip()]

    def launched(self, session_id: str) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            for launch in self.launches():
                if launch["env"].get("MACHINE_HUB_SESSION_ID") == session_id:
                    return launch
            return None

        found: dict[str, Any] = wait_until(find, 10, f"the fake CLI of session {session_id}")
        return found

    def close(self) -> None:
        for process in reversed(self.processes):
            process.kill()
        for launch in self.launches():
            try:
                os.killpg(launch["pgid"], signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.redis.close()
        if self.arq_redis is not self.redis:
            self.arq_redis.close()
        if self.redis_server is not None:
            self.redis_server.kill()  # a test may have replaced the server the fixture started
        subprocess.run(["tmux", "-L", self.settings.tmux_socket, "kill-server"], capture_output=True, check=False)

    def dump_logs(self) -> Iterator[str]:
        for process in self.processes:
            yield f"----- {process.name} -----\n{process.log_text()[-4000:]}"
