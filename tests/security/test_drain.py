"""A drained machine cannot undrain itself, nor name itself: both live in `reg`, which only hubs,
the worker and the admin write. Each attack holds the machine's own Redis URL, as a session on it
could, against real ACL users, hubs and an agent."""

from __future__ import annotations

import httpx2
import msgspec

from core.lua import SHA
from core.machine_schemas import MachineInfo
from tests.e2e.harness import Stack
from tests.security.conftest import client_for
from tests.security.test_machine_credentials import refused


def test_a_drained_machine_cannot_undrain_or_rename_itself(stack: Stack, machine_id: str) -> None:
    stack.start_agent(machine_id)
    hub = stack.hubs[0].url
    assert httpx2.post(f"{hub}/api/machines/{machine_id}/drain", headers=stack.auth()).json()["drained"] is True
    attacker = client_for(stack.machine_url("default", machine_id))
    reg = stack.keys.reg("default", machine_id)
    assert refused(attacker.hdel, reg, "drained")
    assert refused(attacker.hset, reg, "drained", "0")
    assert refused(attacker.hset, reg, "displayName", "trusted box")
    assert refused(attacker.delete, reg)
    # The hubs' own script, run by the machine on its own registration: Redis checks its keys.
    assert refused(attacker.evalsha, SHA["SET_REG"], 1, reg, "drained", "")
    assert refused(attacker.evalsha, SHA["UNREGISTER"], 2, reg, stack.keys.info("default", machine_id))
    # What it may write, its own info, cannot carry the flag: the listing reads `reg` alone.
    info = stack.keys.info("default", machine_id)
    forged = msgspec.json.decode(stack.redis.get(info), type=dict)
    forged |= {"drained": False, "displayName": "trusted box"}
    attacker.set(info, msgspec.json.encode(forged))
    assert msgspec.json.decode(attacker.get(info), type=MachineInfo).hostname

    (listed,) = [
        m for m in httpx2.get(f"{hub}/api/machines", headers=stack.auth()).json()["machines"] if m["id"] == machine_id
    ]
    assert listed["drained"] is True and listed["displayName"] is None
    spawn = httpx2.post(f"{hub}/api/machines/{machine_id}/spawn", headers=stack.auth(), json={"directory": "/tmp"})
    assert spawn.json()["code"] == "machine_draining"
