"""Redis killed and restarted under running hubs and an agent: 503 at once, then recovery by itself."""

from __future__ import annotations

from pathlib import Path

import httpx2

from machine_hub.redis_server import RedisServer
from tests.e2e.harness import Stack, wait_until


def _all_routes(stack: Stack, hub_url: str, machine_id: str, tmp_path: Path) -> list[httpx2.Response]:
    auth = stack.auth()
    return [
        httpx2.get(f"{hub_url}/api/machines", headers=auth, timeout=10),
        httpx2.post(
            f"{hub_url}/api/machines/{machine_id}/spawn", headers=auth, json={"directory": str(tmp_path)}, timeout=10
        ),
        httpx2.post(
            f"{hub_url}/api/machines/{machine_id}/paths/exists", headers=auth, json={"paths": ["/"]}, timeout=10
        ),
    ]


def test_redis_down_is_503_at_once_and_everything_recovers(stack: Stack, machine_id: str, tmp_path: Path) -> None:
    stack.start_agent(machine_id)
    stack.start_worker()
    port, args = stack.redis_server.port, stack.redis_server.args
    stack.redis_server.kill()

    for hub in stack.hubs:
        for r in _all_routes(stack, hub.url, machine_id, tmp_path):
            assert r.status_code == 503, r.text
            assert r.json() == {"error": "Hub not connected"}
            assert r.elapsed.total_seconds() < stack.settings.redis_socket_timeout_s
        missing = httpx2.get(f"{hub.url}/api/machines", timeout=10)
        assert missing.status_code == 401, "401 comes before 503"

    # A restart without data persistence: Redis lost every key but kept its ACL file (the users).
    # The agent beats again by itself, and the worker restores the registration Redis lost.
    stack.redis_server = RedisServer(stack.redis_server.folder, port=port, args=args).start()
    stack.wait_online("default", machine_id)

    def listed_everywhere() -> bool:
        for hub in stack.hubs:
            r = httpx2.get(f"{hub.url}/api/machines", headers=stack.auth(), timeout=10)
            if r.status_code != 200 or machine_id not in [m["id"] for m in r.json()["machines"]]:
                return False
        return True

    wait_until(listed_everywhere, 15, "the machine to be listed again on both hubs")
    for hub in stack.hubs:
        r = httpx2.post(
            f"{hub.url}/api/machines/{machine_id}/paths/exists",
            headers=stack.auth(),
            json={"paths": [str(tmp_path)]},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        assert r.json() == {"exists": {str(tmp_path): True}}
        r = httpx2.post(
            f"{hub.url}/api/machines/{machine_id}/spawn",
            headers=stack.auth(),
            json={"directory": str(tmp_path)},
            timeout=10,
        )
        assert r.json()["success"] is True, r.text
    assert all(p.alive() for p in stack.processes), "nothing was restarted"
    # Every failure the outage caused was handled: none is left for asyncio to report at exit.
    unhandled = [p.log for p in stack.processes if "exception was never retrieved" in p.log_text()]
    assert not unhandled, unhandled
