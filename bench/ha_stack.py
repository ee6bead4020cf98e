"""The deployment bench/failover.py runs, as real processes on loopback: Redis behind Sentinel
(primary, replica, three sentinels), hubs, one worker and agents (Caddy: bench/proxy.py).

Each process gets its configuration the way an operator gives it: the environment, with its own
Redis user made by core.admin as `machine-hub setup` and `machine add` make them, on every data
node. Production defaults throughout, except that spawn rate limits are off (the bench spawns
faster than people), a claim waits for one replica (MACHINE_HUB_REDIS_WAIT_REPLICAS=1, so a
failover cannot lose the claim of a spawn that runs) and sessions are a stand-in CLI
(tests/fixtures/fake_cli.py) started by the pty launcher, which logs every start with its folder.
"""

from __future__ import annotations

import collections
import functools
import importlib.util
import json
import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.admin import Admin
from core.connections import request_client
from core.notifications import NOTIFY_FLAGS
from core.settings import Settings
from machine_hub.redis_sentinel import SentinelTopology
from machine_hub.redis_server import Credentials, free_port

ROOT = Path(__file__).resolve().parent.parent
NS, SECRET = "default", "bench-secret"
FAKE_CLI_LIFETIME_S = 5  # long enough to outlive the spawn's settle time (1 s), short enough to leave few


@dataclass
class Proc:
    """One child in a session of its own (Ctrl-C reaches only the bench), logging to `log`."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.log.parent, start_new_session=True,
            )  # fmt: skip
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.alive:
            self.popen.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        assert self.popen is not None
        return self.popen.wait(timeout_s)

    def stop(self) -> None:
        self.signal(signal.SIGTERM)
        try:
            self.wait(15)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.wait(5)

    def tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@dataclass
class HaStack:
    tmp: Path
    agents: int
    down_after_ms: int
    procs: dict[str, Proc] = field(default_factory=dict)
    hub_ports: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        password = secrets.token_urlsafe(16)
        # Replicas and sentinels log in as the admin (`default`), as compose.ha.yml's nodes do.
        self.topology = SentinelTopology(
            self.tmp / "redis",
            credentials=Credentials(password=password, username="default"),
            acl=f"user default on >{password} ~* &* +@all\n",
            server_args=("--notify-keyspace-events", NOTIFY_FLAGS),
            down_after_ms=self.down_after_ms,
        )
        # The sentinels name the primary; the URL gives the login (its host is not used then).
        self.admin_url = f"redis://default:{password}@127.0.0.1:{self.topology.nodes[0].port}/0"
        self.machines = [f"bench-m{i:02d}" for i in range(1, self.agents + 1)]
        self.cli_log = self.tmp / "cli.jsonl"
        self.workspace = self.tmp / "workspace"
        self.urls: dict[str, str] = {}

    @functools.cached_property
    def settings(self) -> Settings:
        return Settings(
            redis_url=self.admin_url,
            redis_sentinels=tuple(self.topology.sentinels_setting.split(",")),
            cli_api_token=SECRET,
            key_prefix="bench",
            redis_wait_replicas=1,
            spawns_per_minute_namespace=0,
            spawns_per_minute_token=0,
            launcher="pty",
        )

    async def start(self, hubs: list[str]) -> None:
        """Redis, the users, then the worker, `hubs` (names) and the agents; until every machine is listed."""
        self.topology.start()
        self.workspace.mkdir(parents=True, exist_ok=True)
        _fake_cli().install(self.tmp / "bin")
        client = request_client(self.settings)
        try:
            admin = Admin(client, self.settings)
            await admin.configure_notifications(NOTIFY_FLAGS)
            await admin.save()
            await admin.scripts.load()
            for role in ("hub", "worker"):
                self.urls[role] = (await admin.add_service(role)).url
            for machine_id in self.machines:
                self.urls[machine_id] = (await admin.add_machine(NS, machine_id))[1].url
        finally:
            await client.aclose()
        self.run("worker", ["worker", "--log-level", "warning"], self.urls["worker"])
        for name in hubs:
            self.hub_ports[name] = free_port()
            self.start_hub(name)
        for machine_id in self.machines:
            home = str(self.tmp / "agents" / machine_id)
            args = ["agent", "--namespace", NS, "--machine-id", machine_id, "--home", home, "--log-level", "warning"]
            self.run(machine_id, args, self.urls[machine_id])

    def env(self, redis_url: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MACHINE_HUB_") and k != "CLI_API_TOKEN"}
        env |= self.settings.to_env() | {"REDIS_URL": redis_url, "HOME": str(self.tmp)}
        env |= {"PATH": f"{self.tmp / 'bin'}{os.pathsep}{env['PATH']}", "FAKE_CLI_LOG": str(self.cli_log)}
        return env | {"FAKE_CLI_LIFETIME": str(FAKE_CLI_LIFETIME_S)}

    def run(self, name: str, args: list[str], redis_url: str) -> Proc:
        argv = [sys.executable, "-m", "machine_hub", *args]
        self.procs[name] = Proc(name, argv, self.env(redis_url), self.tmp / f"{name}.log").start()
        return self.procs[name]

    def start_hub(self, name: str) -> Proc:
        """The hub `name` on its own port, again after a stop."""
        port = str(self.hub_ports[name])
        return self.run(name, ["api", "--port", port, "--log-level", "warning"], self.urls["hub"])

    def hub_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.hub_ports[name]}"

    def check(self) -> None:
        for name in ("worker", *self.hub_ports, *self.machines):
            proc = self.procs[name]
            if not proc.alive:
                raise RuntimeError(f"{name} exited:\n{proc.tail()}")

    def launches(self) -> collections.Counter[str]:
        """How often the stand-in CLI started in each folder."""
        if not self.cli_log.exists():
            return collections.Counter()
        return collections.Counter(json.loads(line)["cwd"] for line in self.cli_log.read_text().splitlines() if line)

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            try:
                proc.stop()
            except (OSError, subprocess.SubprocessError):
                pass
        if self.cli_log.exists():  # a stand-in CLI still waiting out its lifetime
            for line in self.cli_log.read_text().splitlines():
                try:
                    os.killpg(json.loads(line)["pgid"], signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        self.topology.stop()


def _fake_cli() -> Any:
    spec = importlib.util.spec_from_file_location("fake_cli", ROOT / "tests" / "fixtures" / "fake_cli.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
