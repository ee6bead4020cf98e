"""Real processes for end-to-end tests: redis-server, hubs and agents, each logging to a file.

Processes get their configuration the way users give it, through the environment
(Settings.to_env), with short heartbeats and deadlines so faults show up in seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import redis

from core.keys import Keys
from core.settings import Settings
from machine_hub.redis_server import RedisServer, free_port

SECRET = "e2e-secret"
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
        tmux_socket=f"mh-test-{uuid.uuid4().hex[:8]}",
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
    """One Redis and the hubs and agents a test starts against it."""

    tmp: Path
    redis_server: RedisServer
    settings: Settings
    processes: list[Process] = field(default_factory=list)
    hubs: list[Process] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.keys = Keys(self.settings.key_prefix)
        self.redis = redis.Redis.from_url(self.settings.redis_url, socket_timeout=5)
        self.bin = self.tmp / "bin"
        load_fake_cli().install(self.bin)
        self.cli_log = self.tmp / "cli.jsonl"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MACHINE_HUB_")}
        env.update(self.settings.to_env())
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["FAKE_CLI_LOG"] = str(self.cli_log)
        env["FAKE_CLI_LIFETIME"] = "60"
        env.update(extra)
        return env

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

    def start_hub(self, **env: str) -> Process:
        port = free_port()
        hub = self._spawn(f"hub-{port}", ["api", "--port", str(port), "--log-level", "warning"], self.env(**env))
        hub.url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if not hub.alive():
                raise AssertionError(f"hub exited:\n{hub.log_text()}")
            try:
                return httpx2.get(f"{hub.url}/api/machines", headers=self.auth(), timeout=1).status_code == 200
            except httpx2.TransportError:
                return False

        wait_until(up, 20, "the hub to answer")
        return hub

    def start_agent(self, machine_id: str, namespace: str = "default", *, wait: bool = True, **env: str) -> Process:
        home = self.tmp / "agents" / f"{namespace}-{machine_id}"
        agent_env = self.env(HOME=str(self.tmp / "home"), **env)
        (self.tmp / "home").mkdir(exist_ok=True)
        agent = self._spawn(
            f"agent-{namespace}-{machine_id}",
            ["agent", "--namespace", namespace, "--machine-id", machine_id, "--home", str(home), "--log-level", "info"],
            agent_env,
        )
        if wait:
            self.wait_online(namespace, machine_id, agent)
        return agent

    def wait_online(self, namespace: str, machine_id: str, agent: Process | None = None) -> None:
        def online() -> bool:
            if agent is not None and not agent.alive():
                raise AssertionError(f"agent exited:\n{agent.log_text()}")
            return bool(self.redis.exists(self.keys.heartbeat(namespace, machine_id)))

        wait_until(online, 20, f"machine {machine_id} to come online")

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
        self.redis_server.kill()  # a test may have replaced the server the fixture started
        subprocess.run(["tmux", "-L", self.settings.tmux_socket, "kill-server"], capture_output=True, check=False)

    def dump_logs(self) -> Iterator[str]:
        for process in self.processes:
            yield f"----- {process.name} -----\n{process.log_text()[-4000:]}"
