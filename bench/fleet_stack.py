"""The processes of one bench/fleet.py run: a private redis-server, one hub, one worker and the
agent host processes (bench/fleet_agents.py), plus one host with a single probe machine whose
sessions find a stand-in CLI (the other agents find none, so no agent starts a `--version` process).

Every process uses Redis's default user: 10,000 per-machine ACL users would measure `machine add`,
not the fleet (bench/roundtrip.py prices the ACL checks of one request).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import sys
from pathlib import Path

from redis.asyncio import Redis

from bench.fleet_agents import machine_id
from bench.roundtrip import _fake_cli
from bench.roundtrip_load import Processes
from core.connections import request_client
from core.keys import Keys
from core.lua import Scripts
from core.registry import Registry
from core.settings import Settings
from machine_hub.redis_server import RedisServer, free_port

NS, SECRET, PROBE = "default", "fleet-secret", "fleet-probe"
ROOT = Path(__file__).resolve().parent.parent


def raise_open_files(want: int) -> int:
    """Raise this process's open-files limit (its children inherit it) towards `want`; the soft limit."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    for limits in ((max(want, hard), max(want, hard)), (hard, hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            break
        except (ValueError, OSError):
            continue  # only root may raise the hard limit
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class FleetStack:
    def __init__(self, tmp: Path, size: int, per_host: int) -> None:
        self.tmp, self.size = tmp, size
        self.hosts = [(first, min(per_host, size - first)) for first in range(0, size, per_host)]
        args = ("--maxclients", str(2 * size + 2000), "--tcp-backlog", "4096", "--notify-keyspace-events", "Kgn")
        self.server = RedisServer(tmp / "redis", args=args)
        self.procs = Processes(tmp)
        self.port = free_port()
        self.settings = Settings()

    @property
    def machines(self) -> int:
        return self.size + 1  # the fleet and the probe machine

    async def start(self) -> None:
        self.server.start()
        self.settings = Settings(
            redis_url=self.server.url,
            cli_api_token=SECRET,
            key_prefix="fleet",
            launcher="pty",
            spawn_settle_s=0.05,
            max_events=4 * self.size + 10_000,  # every machine event of the run stays readable
        )
        await self.register()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MACHINE_HUB_")} | self.settings.to_env()
        env |= {"HOME": str(self.tmp), "FAKE_CLI_LIFETIME": "120", "PYTHONPATH": str(ROOT)}
        cli = [sys.executable, "-m", "machine_hub"]
        self.procs.start("hub", [*cli, "api", "--port", str(self.port), "--log-level", "warning"], env, ROOT)
        self.procs.start("worker", [*cli, "worker", "--log-level", "info"], env, ROOT)
        host = [sys.executable, str(ROOT / "bench" / "fleet_agents.py"), "--home", str(self.tmp / "homes")]
        bin_dir = self.tmp / "bin"
        _fake_cli().install(bin_dir)
        probe = ["--ids", PROBE, "--cli-path", f"{bin_dir}:{os.environ['PATH']}"]
        self.procs.start("host-probe", [*host, *probe, "--status", str(self.tmp / "host-probe.json")], env, ROOT)
        for i, (first, count) in enumerate(self.hosts):
            status = str(self.tmp / f"host-{i}.json")
            argv = [*host, "--first", str(first), "--count", str(count), "--status", status]
            self.procs.start(f"host-{i}", argv, env, ROOT)

    async def register(self) -> None:
        """Register every machine, as `machine-hub machine add` does (without its ACL user)."""
        redis = self.client()
        registry = Registry(redis, Keys(self.settings.key_prefix), Scripts(redis, can_load=True))
        gate = asyncio.Semaphore(200)

        async def one(mid: str) -> None:
            async with gate:
                await registry.register(NS, mid)

        try:
            await asyncio.gather(one(PROBE), *(one(machine_id(i)) for i in range(self.size)))
        finally:
            await redis.aclose()

    def client(self) -> Redis:
        return request_client(self.settings)

    def statuses(self) -> list[dict[str, int | str]]:
        found = []
        for name in ["host-probe", *(f"host-{i}" for i in range(len(self.hosts)))]:
            path = self.tmp / f"{name}.json"
            found.append(json.loads(path.read_text()) if path.exists() else {"phase": "starting"})
        return found

    async def go(self) -> None:
        """Wait until every host has built its agents, then start them all at once."""
        while any(s["phase"] != "built" for s in self.statuses()):
            self.procs.check()
            await asyncio.sleep(0.2)
        for name, proc in self.procs.running.items():
            if name.startswith("host-"):
                proc.send_signal(signal.SIGUSR1)

    def signal(self, names: list[str], sig: signal.Signals) -> None:
        for name in names:
            self.procs.running[name].send_signal(sig)

    def fleet_hosts(self) -> list[str]:
        return [f"host-{i}" for i in range(len(self.hosts))]

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of Redis, the hub, the worker and the agent hosts together."""
        assert self.server.process is not None
        found = {"redis": cpu_s(self.server.process.pid)}
        for name, proc in self.procs.running.items():
            key = "agents" if name.startswith("host-") else name
            found[key] = found.get(key, 0.0) + cpu_s(proc.pid)
        return found

    def restart_redis(self) -> None:
        """SIGKILL Redis and start it again on the same port, empty (no persistence), same options."""
        self.server.kill()
        self.server.start()

    async def stop(self) -> None:
        await asyncio.to_thread(self.procs.stop_all)
        self.server.stop()
