"""deploy/compose.ha.yml merged over docker-compose.yml, proven without a Docker engine: the merged
services run as local processes with the commands and environment the files give them
(tests/e2e/compose_local.py), two data nodes and three sentinels included, all over TLS. A machine
is listed and spawns; the primary is SIGKILLed and started again as its restart policy would;
after the failover the machine is listed again and spawns again, and every service's user is on
both data nodes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx2
import pytest
import redis

from machine_hub.redis_server import free_port
from tests.e2e.compose_local import ROOT, LocalCompose, load
from tests.e2e.harness import Process, load_fake_cli, wait_until

pytestmark = [pytest.mark.ha, pytest.mark.timeout(240)]  # a failover and a restart take a minute

SERVICES: dict[str, Any] = load(ROOT / "docker-compose.yml", ROOT / "deploy" / "compose.ha.yml")["services"]
DATA_NODES = ("redis", "redis-replica")
SENTINELS = ("sentinel-1", "sentinel-2", "sentinel-3")
APP = ("setup", "hub", "worker", "agent", "tokens", "admin")


def test_the_merged_file_runs_redis_behind_sentinel_for_every_service() -> None:
    for name in (*DATA_NODES, *SENTINELS):
        service = SERVICES[name]
        assert service["restart"] == "unless-stopped" and "healthcheck" in service, name
        assert service["image"].startswith("redis:"), name
        script = service["command"][-1]
        assert "--tls-port" in script and "--port 0" in script and "--tls-replication yes" in script, name
    for name in DATA_NODES:
        script = SERVICES[name]["command"][-1]
        for option in ("--aclfile /data/users.acl", "--notify-keyspace-events Kgn", "--appendonly yes"):
            assert option in script, (name, option)
    for name in APP:
        env = SERVICES[name]["environment"]
        assert env["MACHINE_HUB_REDIS_SENTINELS"] == "sentinel-1:26379,sentinel-2:26379,sentinel-3:26379", name
        assert env["MACHINE_HUB_REDIS_MASTER"] == "mymaster" and env["MACHINE_HUB_REDIS_CA"], name
        mounts = {spec.split(":")[1] for spec in SERVICES[name]["volumes"]}
        assert os.path.dirname(env["MACHINE_HUB_REDIS_CA"]) in mounts, name
    # The admin URL is still only where the base file puts it; replicas and sentinels have a user of their own.
    holders = {n for n, s in SERVICES.items() for v in s.get("volumes", []) if v.split(":")[0] == "admin"}
    assert holders == {"init", "setup", "admin"}
    assert {"sentinel-1", "sentinel-2", "sentinel-3"} <= set(SERVICES["setup"]["depends_on"])


@dataclass
class Deployment:
    tmp: Path
    compose: LocalCompose
    nodes: dict[str, Process] = field(default_factory=dict)
    apps: list[Process] = field(default_factory=list)
    hub_url: str = ""
    token: str = ""

    def start_node(self, name: str) -> Process:
        """A data node or sentinel: its compose command (an sh script ending in exec redis-server)."""
        log = self.tmp / f"{name}.log"
        workdir = self.compose.root(name) / "data"  # the Redis image's WORKDIR: AOF and RDB files go there
        with log.open("ab") as out:
            popen = subprocess.Popen(
                self.compose.command(name),
                env=self.compose.env(name),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        self.nodes[name] = Process(name, popen, log)
        return self.nodes[name]

    def start_app(self, name: str, command: list[str]) -> Process:
        log = self.tmp / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "machine_hub", *command],
                env=self.compose.env(name),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.tmp,
            )
        self.apps.append(Process(name, popen, log))
        return self.apps[-1]

    @property
    def ca(self) -> str:
        return str(self.compose.volume("ca") / "ca.crt")

    def client(self, name: str, port: int, *, admin: bool) -> redis.Redis:
        """A TLS client of one node (as the admin) or sentinel (no login)."""
        login: dict[str, Any] = {}
        if admin:
            url = urlsplit((self.compose.volume("admin") / "redis.url").read_text().strip())
            login = {"username": unquote(url.username or ""), "password": unquote(url.password or "")}
        local = self.compose.local_port(name, port)
        tls = {"ssl": True, "ssl_ca_certs": self.ca, "ssl_cert_reqs": "required"}
        return redis.Redis("127.0.0.1", local, socket_timeout=2, decode_responses=True, **tls, **login)

    def ask(self, name: str, port: int, *args: Any, admin: bool = False) -> Any:
        client = self.client(name, port, admin=admin)
        try:
            return client.execute_command(*args)
        finally:
            client.close()

    def primary(self) -> str:
        """The data node every sentinel names the primary, once they agree."""
        ports = {node: self.compose.local_port(node, 6380) for node in DATA_NODES}
        named = {int(self.ask(s, 26379, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")[1]) for s in SENTINELS}
        assert len(named) == 1, f"the sentinels disagree: {named}"
        return next(node for node, port in ports.items() if port in named)

    def healthy(self) -> bool:
        """The sentinels agree on a primary, see each other and a replica in sync with it."""
        try:
            primary = self.primary()
            replica = next(n for n in DATA_NODES if n != primary)
            if self.ask(replica, 6380, "ROLE", admin=True)[3] != "connected":
                return False
            for sentinel in SENTINELS:
                client = self.client(sentinel, 26379, admin=False)
                try:
                    state = client.sentinel_master("mymaster")
                    replicas = [r for r in client.sentinel_slaves("mymaster") if not r["is_sdown"]]
                finally:
                    client.close()
                if state["is_sdown"] or state["num-other-sentinels"] != len(SENTINELS) - 1 or not replicas:
                    return False
            return True
        except (redis.RedisError, AssertionError, OSError, StopIteration, IndexError):
            return False

    def get(self, path: str) -> httpx2.Response:
        return httpx2.get(f"{self.hub_url}{path}", headers={"Authorization": f"Bearer {self.token}"}, timeout=20)

    def spawn(self) -> httpx2.Response:
        directory = self.compose.volume("workspace") / f"ha-{uuid.uuid4().hex[:8]}"
        return httpx2.post(
            f"{self.hub_url}/api/machines/compose-demo/spawn",
            json={"directory": str(directory)},
            headers={"Authorization": f"Bearer {self.token}", "Idempotency-Key": directory.name},
            timeout=40,
        )

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_text()[-2000:]}" for p in [*self.nodes.values(), *self.apps])


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("compose-ha")
    load_fake_cli().install(tmp / "bin")
    base = {k: v for k, v in os.environ.items() if not k.startswith("MACHINE_HUB_") and k != "CLI_API_TOKEN"}
    base.update(
        PATH=f"{tmp / 'bin'}{os.pathsep}{os.environ['PATH']}",
        FAKE_CLI_LOG=str(tmp / "cli.jsonl"),
        FAKE_CLI_LIFETIME="30",
        HOME=str(tmp),
        MACHINE_HUB_KEY_PREFIX="compose-ha",
        MACHINE_HUB_SWEEP_INTERVAL_S="1",
        MACHINE_HUB_TMUX_SOCKET=f"mh-compose-ha-{uuid.uuid4().hex[:8]}",
    )
    top = Deployment(tmp, LocalCompose(tmp, base, SERVICES))
    try:
        top.compose.run_once("init")
        for name in (*DATA_NODES, *SENTINELS):
            top.start_node(name)
        wait_until(top.healthy, 60, f"a healthy Sentinel deployment\n{top.logs()}")
        top.compose.run_once("setup")
        port = free_port()
        hub = [part.replace("0.0.0.0", "127.0.0.1") for part in top.compose.command("hub")]
        top.start_app("hub", [str(port) if part == "3006" else part for part in hub])
        top.hub_url = f"http://127.0.0.1:{port}"
        top.start_app("worker", top.compose.command("worker"))
        top.start_app("agent", top.compose.command("agent"))
        created = subprocess.run(
            [sys.executable, "-m", "machine_hub", "token", "create", "--namespace", "default"],
            env=top.compose.env("tokens"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert created.returncode == 0, created.stderr
        top.token = created.stdout.strip()
        yield top
    finally:
        for process in [*top.apps, *top.nodes.values()]:
            process.kill()
        subprocess.run(["tmux", "-L", base["MACHINE_HUB_TMUX_SOCKET"], "kill-server"], capture_output=True, check=False)


def listed(top: Deployment) -> bool:
    try:
        response = top.get("/api/machines")
    except httpx2.TransportError:
        return False
    return response.status_code == 200 and [m["id"] for m in response.json()["machines"]] == ["compose-demo"]


def spawned(top: Deployment) -> bool:
    try:
        response = top.spawn()
    except httpx2.TransportError:
        return False
    return response.status_code == 200 and response.json()["success"] is True


def test_the_machine_is_listed_and_spawns_and_every_user_is_on_both_nodes(deployment: Deployment) -> None:
    wait_until(lambda: listed(deployment), 60, f"the demo machine listed\n{deployment.logs()}")
    assert spawned(deployment), deployment.logs()
    for node in DATA_NODES:
        users = set(deployment.ask(node, 6380, "ACL", "USERS", admin=True))
        assert {"replication", "compose-ha~hub", "compose-ha~worker", "compose-ha~default~compose-demo"} <= users


def test_after_the_primary_is_killed_the_machine_is_listed_and_spawns_again(deployment: Deployment) -> None:
    wait_until(lambda: listed(deployment), 60, "the demo machine listed")
    killed = deployment.primary()
    deployment.nodes[killed].kill()
    wait_until(lambda: _primary_now(deployment) not in (None, killed), 60, "the sentinels to promote the replica")
    # As `restart: unless-stopped` would: its script waits out the failover, then it rejoins as a replica.
    started = time.monotonic()
    deployment.start_node(killed)
    wait_until(lambda: listed(deployment), 60, f"the machine listed after the failover\n{deployment.logs()}")
    wait_until(lambda: spawned(deployment), 90, f"a spawn after the failover\n{deployment.logs()}")
    wait_until(deployment.healthy, 60, "the killed node back as a replica")
    assert deployment.primary() != killed and time.monotonic() - started >= 10
    users = set(deployment.ask(killed, 6380, "ACL", "USERS", admin=True))
    assert "compose-ha~default~compose-demo" in users  # from its own ACL file


def _primary_now(top: Deployment) -> str | None:
    """The primary the sentinels agree on in one look, or None while they disagree (mid-failover)."""
    try:
        return top.primary()
    except (redis.RedisError, AssertionError, OSError, StopIteration):
        return None
