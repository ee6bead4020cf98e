"""docker-compose.yml, proven without a Docker engine: its services run as local processes.

Redis, three hub replicas on loopback aliases behind Caddy (which finds them through DNS, as in
compose), the worker and the demo agent, all started with the commands and environment the
compose file gives them. Then a hub is killed and another added while requests flow.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis as redis_client

from api.server import GRACEFUL_SHUTDOWN_S
from core.settings import Settings
from machine_hub.redis_server import RedisServer, free_port
from tests.e2e.compose_local import ROOT, SERVICES, LocalCompose
from tests.e2e.dns import ServiceDns
from tests.e2e.harness import Process, load_fake_cli, wait_until

HUB_STOP_S = GRACEFUL_SHUTDOWN_S + Settings().shutdown_drain_s  # the longest a hub takes to stop
ONE_SHOT = ("init", "setup")


def seconds(value: str) -> float:
    return float(value.rstrip("s"))


def test_every_service_is_complete() -> None:
    readme = (ROOT / "README.md").read_text()
    compose_text = (ROOT / "docker-compose.yml").read_text()
    for name, service in SERVICES.items():
        one_shot = name in ONE_SHOT or "tools" in service.get("profiles", [])
        assert one_shot or "healthcheck" in service, f"{name} has no healthcheck"
        assert service.get("image") or service.get("build"), f"{name} has no image"
        for dep, dependency in service.get("depends_on", {}).items():
            wanted = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert dependency == {"condition": wanted}, (name, dep)
    for name in ("hub", "worker", "agent"):
        command = SERVICES[name]["command"]
        assert (
            subprocess.run(
                [sys.executable, "-m", "machine_hub", *command, "--help"], capture_output=True, check=False
            ).returncode
            == 0
        ), f"{name}: machine-hub {command} is not a command"
        assert seconds(SERVICES[name]["stop_grace_period"]) > HUB_STOP_S
        health = SERVICES[name]["healthcheck"]["test"]
        if health[1] == "machine-hub":
            assert (
                subprocess.run(
                    [sys.executable, "-m", "machine_hub", *health[2:], "--help"], capture_output=True, check=False
                ).returncode
                == 0
            ), f"{name}: healthcheck {health} is not a command"
    assert SERVICES["hub"]["deploy"]["replicas"] >= 2
    redis_command = SERVICES["redis"]["command"]
    for option in (
        "--appendonly yes",
        "--appendfsync everysec",
        "--aclfile",
        "--tls-port 6380",
        "--notify-keyspace-events",
    ):
        assert option in redis_command
    assert "--maxmemory-policy noeviction" in redis_command
    # No password anywhere in the file: every one is made at first start.
    assert "requirepass" not in compose_text and "PASSWORD" not in compose_text
    # Each service holds its own URL only: the admin URL's volume is mounted by setup and admin alone.
    holders = {n for n, s in SERVICES.items() for v in s.get("volumes", []) if v.split(":")[0] == "admin"}
    assert holders == {"init", "setup", "admin"}
    for variable in set(re.findall(r"\$\{(\w+)", (ROOT / "docker-compose.yml").read_text())):
        assert f"`{variable}`" in readme, f"{variable} is not documented in the README"
    caddyfile = (ROOT / "deploy" / "Caddyfile").read_text()
    assert "dynamic a" in caddyfile and "flush_interval -1" in caddyfile and "health_uri /readyz" in caddyfile
    for limit in ("read_header 10s", "read_body 10s", "max_header_size", "max_size 4MiB", "keepalive 4s"):
        assert limit in caddyfile, f"the proxy sets no {limit}"
    assert not re.search(r"^\s*write\s", caddyfile, re.M), "a write timeout would cut event streams"
    assert Settings().keep_alive_timeout_s > 4, "the proxy must drop idle upstream connections before a hub does"
    directives = [
        line.split()[0] for line in caddyfile.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    # Caddy 2.6 resends a retried request without its body, and buffer_requests mixes up bodies.
    assert not {"lb_retry_match"} & set(directives)
    assert (ROOT / "deploy" / "Dockerfile").read_text().count("FROM ") == 2


@dataclass
class Topology:
    tmp: Path
    env: dict[str, str]
    redis: RedisServer
    dns: ServiceDns
    proxy_url: str = ""
    hubs: dict[str, Process] = field(default_factory=dict)
    others: list[Process] = field(default_factory=list)
    token: str = ""
    compose: LocalCompose = field(init=False)

    def run(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Process:
        log = self.tmp / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "machine_hub", *args],
                env=env or self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.tmp,
            )
        return Process(name, popen, log)

    def add_hub(self, address: str) -> Process:
        command = [address if part == "0.0.0.0" else part for part in self.compose.command("hub")]
        hub = self.run(f"hub-{address}", command)
        hub.url = f"http://{address}:3006"
        wait_until(lambda: _ok(f"{hub.url}/readyz"), 20, f"hub {address}")
        self.hubs[address] = hub
        self.dns.addresses = list(self.hubs)
        return hub

    def served(self, hub: Process) -> int:
        """Path checks this hub answered, from its own /metrics."""
        text = httpx2.get(f"{hub.url}/metrics", timeout=5).text
        pattern = (
            r'machine_hub_http_requests_total\{[^}]*route="/api/machines/\{machine_id\}/paths/exists"[^}]*\} (\S+)'
        )
        return int(sum(float(v) for v in re.findall(pattern, text)))

    def check(self, directory: Path) -> httpx2.Response:
        return httpx2.post(
            f"{self.proxy_url}/api/machines/compose-demo/paths/exists",
            json={"paths": [str(directory)]},
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=20,
        )

    def spawn(self, directory: Path) -> httpx2.Response:
        return httpx2.post(
            f"{self.proxy_url}/api/machines/compose-demo/spawn",
            json={"directory": str(directory)},
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_text()[-2000:]}" for p in [*self.hubs.values(), *self.others])


def _ok(url: str) -> bool:
    try:
        return httpx2.get(url, timeout=1).status_code == 200
    except httpx2.TransportError:
        return False


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    tmp = tmp_path_factory.mktemp("compose")
    bin_dir = tmp / "bin"
    load_fake_cli().install(bin_dir)
    base = {k: v for k, v in os.environ.items() if not k.startswith("MACHINE_HUB_") and k != "CLI_API_TOKEN"}
    base.update(
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        FAKE_CLI_LOG=str(tmp / "cli.jsonl"),
        FAKE_CLI_LIFETIME="60",
        HOME=str(tmp),
        MACHINE_HUB_KEY_PREFIX="compose",
        MACHINE_HUB_SWEEP_INTERVAL_S="1",
        # The load tests spawn far faster than a person would, all with one token.
        MACHINE_HUB_SPAWNS_PER_MINUTE_NAMESPACE="0",
        MACHINE_HUB_SPAWNS_PER_MINUTE_TOKEN="0",
    )
    compose = LocalCompose(tmp, base)
    base["MACHINE_HUB_TMUX_SOCKET"] = f"mh-compose-{compose.port}"
    compose.run_once("init")
    redis = RedisServer(compose.volume("redis-data"), port=compose.port, args=compose.redis_args()).start()
    with ServiceDns("hub.test") as dns:
        top = Topology(tmp, compose.env("hub"), redis, dns)
        top.compose = compose
        try:
            compose.run_once("setup")
            for address in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
                top.add_hub(address)
            top.others.append(top.run("worker", compose.command("worker"), compose.env("worker")))
            top.others.append(top.run("agent", compose.command("agent"), compose.env("agent")))
            top.proxy_url = _start_caddy(top)
            created = subprocess.run(
                [sys.executable, "-m", "machine_hub", "token", "create", "--namespace", "default"],
                env=compose.env("tokens"),
                capture_output=True,
                text=True,
                check=True,
            )
            top.token = created.stdout.strip()
            workspace = compose.volume("workspace")
            wait_until(lambda: top.check(workspace).status_code == 200, 30, "the demo agent behind the proxy")
            yield top
        finally:
            for process in [*top.hubs.values(), *top.others]:
                process.kill()
            subprocess.run(
                ["tmux", "-L", base["MACHINE_HUB_TMUX_SOCKET"], "kill-server"], capture_output=True, check=False
            )
            redis.kill()


def _start_caddy(top: Topology) -> str:
    """deploy/Caddyfile as compose runs it, pointed at the local DNS and a free port."""
    caddyfile = (ROOT / "deploy" / "Caddyfile").read_text()
    port = free_port()
    assert ":3006 {" in caddyfile and "dynamic a {" in caddyfile and "refresh 5s" in caddyfile
    local = caddyfile.replace(":3006 {", f"http://127.0.0.1:{port} {{", 1)
    local = local.replace("dynamic a {", f"dynamic a {{\n\t\t\tresolvers udp/127.0.0.1:{top.dns.port}", 1)
    local = local.replace("refresh 5s", "refresh 1s")
    assert caddyfile.startswith("#") and "\n{\n" in caddyfile  # the global options block comes first
    local = local.replace("\n{\n", "\n{\n\tadmin off\n\tauto_https off\n\tskip_install_trust\n", 1)
    config = top.tmp / "Caddyfile"
    config.write_text(local)
    log = top.tmp / "caddy.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            ["caddy", "run", "--config", str(config), "--adapter", "caddyfile"],
            env={**top.env, "HUB_HOST": "hub.test"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    top.others.append(Process("caddy", popen, log))
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _ok(f"{url}/livez"), 20, "caddy")
    return url


def test_requests_through_the_proxy_reach_every_hub(topology: Topology) -> None:
    before = {address: topology.served(hub) for address, hub in topology.hubs.items()}
    for _ in range(30):
        assert topology.check(topology.tmp).status_code == 200
    after = {address: topology.served(hub) for address, hub in topology.hubs.items()}
    assert all(after[a] > before[a] for a in before), (before, after)


def _stream(topology: Topology, interrupt: Any, after: int = 30, workers: int = 4) -> list[tuple[str, int, Path]]:
    """Path checks and spawns (each in a directory of its own) from `workers` threads; `interrupt`
    runs once, after the first 20 answers, and the stream ends `after` answers later (counted,
    not timed: this box is shared)."""
    outcomes: list[tuple[str, int, Path]] = []
    lock = threading.Lock()
    done = threading.Event()

    def worker(n: int) -> None:
        i = 0
        while not done.is_set():
            i += 1
            directory = topology.compose.volume("workspace") / f"w{n}-{i}-{time.monotonic_ns()}"
            kind = "spawn" if i % 5 == 0 else "paths"
            try:
                status = (topology.spawn(directory) if kind == "spawn" else topology.check(topology.tmp)).status_code
            except httpx2.TransportError:
                status = 0
            with lock:
                outcomes.append((kind, status, directory))

    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(worker, n) for n in range(workers)]
        try:
            wait_until(lambda: len(outcomes) >= 20, 60, "the first answers")
            interrupt()
            wait_until(lambda: len(outcomes) >= 20 + after, 60, f"{after} answers after the interruption")
        finally:
            done.set()
        for future in futures:
            future.result()
    return outcomes


def _launched(topology: Topology) -> dict[str, int]:
    counts: dict[str, int] = {}
    log = topology.tmp / "cli.jsonl"
    for line in log.read_text().splitlines() if log.exists() else []:
        cwd = re.search(r'"cwd": "([^"]+)"', line)
        if cwd:
            counts[cwd.group(1)] = counts.get(cwd.group(1), 0) + 1
    return counts


def test_a_killed_hub_loses_only_its_requests_in_flight_and_no_spawn_runs_twice(topology: Topology) -> None:
    victim = topology.hubs["127.0.0.3"]
    outcomes = _stream(topology, victim.kill)
    failed = [o for o in outcomes if o[1] != 200]
    # Each of the 4 workers may have had a request on the killed hub, and may send one more there
    # before the proxy has seen it fail (Caddy 2.6 cannot resend a request body elsewhere).
    assert len(failed) <= 8, f"only requests sent to the killed hub may fail: {failed}\n{topology.logs()}"
    launched = _launched(topology)
    spawned = [d for kind, status, d in outcomes if kind == "spawn" and status == 200]
    assert spawned and all(launched.get(str(d), 0) == 1 for d in spawned)
    assert all(n == 1 for n in launched.values()), "a spawn ran twice"
    del topology.hubs["127.0.0.3"]
    topology.dns.addresses = list(topology.hubs)


def test_a_new_hub_starts_taking_traffic(topology: Topology) -> None:
    hub = topology.add_hub("127.0.0.5")

    def reached() -> bool:
        for _ in range(5):
            topology.check(topology.tmp)
        return topology.served(hub) > 0

    wait_until(reached, 20, "the proxy to send requests to the new hub")


def test_a_hub_stopped_under_load_finishes_every_request_it_took(topology: Topology) -> None:
    """Straight to one hub, a new connection per request: after SIGTERM it keeps serving while it
    drains, then refuses new connections; no request it started is cut or fails."""
    leaving = topology.hubs["127.0.0.2"]
    outcomes: list[str] = []
    stop, signalled = threading.Event(), threading.Event()

    def worker() -> None:
        while not stop.is_set():
            try:
                with httpx2.Client(headers={"Authorization": f"Bearer {topology.token}", "Connection": "close"}) as c:
                    r = c.post(
                        f"{leaving.url}/api/machines/compose-demo/paths/exists",
                        json={"paths": [str(topology.tmp)]},
                        timeout=20,
                    )
                outcomes.append(str(r.status_code))
            except httpx2.ConnectError:
                outcomes.append("refused")  # the listener is closed: nothing was sent
                stop.wait(0.05)
            except (httpx2.ReadError, httpx2.RemoteProtocolError) as exc:
                # The instant the listener closes, TCP resets connections still in the accept
                # queue, and uvicorn closes the ones whose request it has not started; neither
                # reached the application. A request it had started is always finished (uvicorn
                # waits for it), so an error while reading an answer's body would mean a cut.
                not_started = "reset by peer" in str(exc) or "without sending a response" in str(exc)
                outcomes.append("refused" if not_started and signalled.is_set() else f"cut: {exc!r}")
            except httpx2.TransportError as exc:
                outcomes.append(f"cut: {exc!r}")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(outcomes) >= 20, 20, "the first answers")
    signalled.set()
    leaving.signal(signal.SIGTERM)
    assert leaving.popen.wait(20) == 0
    wait_until(lambda: outcomes[-1] == "refused", 10, "the stopped hub to refuse connections")
    stop.set()
    for thread in threads:
        thread.join(30)
    cut = [o for o in outcomes if o not in ("200", "refused")]
    assert not cut, f"a request the hub accepted did not get its answer: {cut}"
    assert outcomes.count("200") > 20
    del topology.hubs["127.0.0.2"]
    topology.dns.addresses = list(topology.hubs)


def test_through_the_proxy_a_stopping_hub_never_leaves_a_request_unanswered(topology: Topology) -> None:
    """Caddy answers every request while a hub stops; at most the few it was sending to the hub as
    its listener closed get a 502 (Caddy 2.6 cannot resend a request body), and no spawn runs twice."""
    leaving = topology.add_hub("127.0.0.6")
    wait_until(
        lambda: [topology.check(topology.tmp) for _ in range(4)] and topology.served(leaving) > 0,
        20,
        "the proxy to use the new hub",
    )
    outcomes = _stream(topology, lambda: leaving.signal(signal.SIGTERM))
    assert not [o for o in outcomes if o[1] == 0], "the proxy always answers"
    failed = [o for o in outcomes if o[1] != 200]
    assert all(status == 502 for _kind, status, _d in failed) and len(failed) <= 4, failed
    assert all(n == 1 for n in _launched(topology).values()), "a spawn ran twice"
    assert leaving.popen.wait(20) == 0


def test_event_streams_pass_through_the_proxy_unbuffered(topology: Topology) -> None:
    seen: list[str] = []

    def listen() -> None:
        url = f"{topology.proxy_url}/api/events"
        auth = {"Authorization": f"Bearer {topology.token}"}
        with httpx2.stream("GET", url, headers=auth, timeout=httpx2.Timeout(20, read=20)) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                seen.append(line)
                if line.startswith("event: job"):
                    return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    # Spawns until one's event arrives: each ends with an event the proxy must pass on at once.
    workspace = topology.compose.volume("workspace")
    wait_until(
        lambda: topology.spawn(workspace / f"e-{time.monotonic_ns()}").status_code == 200 and "event: job" in seen,
        15,
        "a job event through the proxy",
    )
    listener.join(5)


def test_every_service_has_its_own_user_and_the_agent_talks_tls(topology: Topology) -> None:
    admin_url = (topology.compose.volume("admin") / "redis.url").read_text().strip()
    admin = redis_client.Redis.from_url(admin_url, socket_timeout=5)
    try:
        clients = [dict(c) for c in admin.client_list()]
    finally:
        admin.close()
    users = {c["user"] for c in clients}
    assert {"compose~hub", "compose~worker", "compose~default~compose-demo"} <= users
    agent_ports = {c["laddr"].rsplit(":", 1)[1] for c in clients if c["user"] == "compose~default~compose-demo"}
    assert agent_ports == {str(topology.compose.tls_port)}
    # The one user with rights to manage users is the admin; no service's URL is the admin's.
    for volume in ("hub-secret", "worker-secret", "tokens-secret", "agent-secret"):
        assert "default:" not in (topology.compose.volume(volume) / "redis.url").read_text()
