"""Agents and hubs reach Redis over TLS and verify its certificate (a test-made CA)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from machine_hub.redis_server import RedisServer, free_port
from machine_hub.tls_certs import CA_CERT, SERVER_CERT, SERVER_KEY, make
from tests.e2e.harness import Stack, acl_redis_server, fast_settings, wait_until


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    make(folder, ["localhost", "127.0.0.1"])
    return folder


@pytest.fixture(scope="module")
def tls_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory, certs: Path, tls_port: int) -> Iterator[RedisServer]:
    tls = ("--tls-port", str(tls_port), "--tls-cert-file", str(certs / SERVER_CERT))
    tls += ("--tls-key-file", str(certs / SERVER_KEY), "--tls-ca-cert-file", str(certs / CA_CERT))
    server = acl_redis_server(tmp_path_factory.mktemp("redis"), *tls, "--tls-auth-clients", "no").start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("stack"), redis_server, fast_settings(redis_server.url))
    yield stack
    stack.close()


def over_tls(url: str, plain_port: int, tls_port: int) -> str:
    assert url.startswith("redis://") and f":{plain_port}/" in url
    return url.replace("redis://", "rediss://", 1).replace(f":{plain_port}/", f":{tls_port}/")


def test_an_agent_and_a_hub_work_over_tls_only(
    stack: Stack, redis_server: RedisServer, certs: Path, tls_port: int, machine_id: str, tmp_path: Path
) -> None:
    ca = {"MACHINE_HUB_REDIS_CA": str(certs / CA_CERT)}
    stack.urls["hub"] = over_tls(stack.urls["hub"], redis_server.port, tls_port)
    stack.hubs = [stack.start_hub(**ca)]
    url = over_tls(stack.machine_url("default", machine_id), redis_server.port, tls_port)
    stack.machine_urls["default", machine_id] = url
    stack.start_agent(machine_id, **ca)
    r = httpx2.post(
        f"{stack.hubs[0].url}/api/machines/{machine_id}/paths/exists",
        headers=stack.auth(),
        json={"paths": [str(tmp_path)]},
        timeout=10,
    )
    assert r.json() == {"exists": {str(tmp_path): True}}
    # Every connection of the machine's user and of the hubs' user came in on the TLS port.
    clients = [dict(c) for c in stack.redis.client_list()]
    users = {f"{stack.keys.prefix}~default~{machine_id}", f"{stack.keys.prefix}~hub"}
    ports = {c["laddr"].rsplit(":", 1)[1] for c in clients if c.get("user") in users}
    assert ports == {str(tls_port)}


def test_a_wrong_ca_is_a_clear_error_not_a_hang(
    stack: Stack, redis_server: RedisServer, tls_port: int, machine_id: str, tmp_path: Path
) -> None:
    other = tmp_path / "other-ca"
    make(other, ["localhost"])
    wrong = {"MACHINE_HUB_REDIS_CA": str(other / CA_CERT)}
    stack.machine_urls["default", machine_id] = over_tls(
        stack.machine_url("default", machine_id), redis_server.port, tls_port
    )
    agent = stack.start_agent(machine_id, wait=False, **wrong)
    wait_until(lambda: "certificate verify failed" in agent.log_text(), 10, "the agent to name the TLS failure")
    assert agent.alive() and "Traceback" not in agent.log_text()
    # A hub that cannot verify the server answers 503 at once, and keeps trying.
    if not stack.urls["hub"].startswith("rediss://"):
        stack.urls["hub"] = over_tls(stack.urls["hub"], redis_server.port, tls_port)
    port = free_port()
    process = stack._spawn(f"hub-{port}", ["api", "--port", str(port)], stack.role_env("hub", **wrong))
    base = f"http://127.0.0.1:{port}"

    def answers() -> httpx2.Response | None:
        try:
            return httpx2.get(f"{base}/api/machines", headers=stack.auth(), timeout=10)
        except httpx2.TransportError:
            return None

    r = wait_until(answers, 20, "the hub to listen")
    started = time.monotonic()
    r = httpx2.get(f"{base}/api/machines", headers=stack.auth(), timeout=10)
    assert r.status_code == 503 and r.json() == {"error": "Hub not connected"}
    assert time.monotonic() - started < stack.settings.redis_socket_timeout_s + 1
    assert httpx2.get(f"{base}/readyz", timeout=10).status_code == 503
    assert process.alive()
