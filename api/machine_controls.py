"""What a tenant changes about a machine: its display name, and whether it takes new spawns.

Both live in the machine's `reg` hash, which only trusted processes write (a machine can never
undrain itself); each change is one script call that says whether it changed anything, and only
a real change publishes the machine's `updated` event (and moves the drained counter). Every
route answers the machine as `GET /api/machines?include=offline` shows it.
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.hub import Hub, hub_of
from api.machines import machine_status
from api.requests import check_owner, decode, json_response, parse, target
from core.errors import MachineNotFound
from core.listing import rows
from core.machine_schemas import MachineUpdate

_update_decoder = msgspec.json.Decoder(MachineUpdate)


async def _answer(hub: Hub, ns: str, machine_id: str, changed: int | None) -> Response:
    if changed is None:  # not registered in this namespace: 404, or 403 for another's
        await check_owner(hub, ns, machine_id, MachineNotFound)
        raise MachineNotFound()
    (row,) = await rows(hub.registry, ns, [machine_id])
    return json_response(machine_status(ns, row))


async def update_machine(request: Request) -> Response:
    hub = hub_of(request)
    ns, machine_id = await target(hub, request)
    update = await parse(hub, request, ns, machine_id, lambda raw: decode(raw, _update_decoder))
    name = (update.display_name or "").strip()
    return await _answer(hub, ns, machine_id, await hub.registry.set_display_name(ns, machine_id, name))


async def drain(request: Request) -> Response:
    hub = hub_of(request)
    ns, machine_id = await target(hub, request)
    return await _answer(hub, ns, machine_id, await hub.registry.set_drained(ns, machine_id, True))


async def undrain(request: Request) -> Response:
    hub = hub_of(request)
    ns, machine_id = await target(hub, request)
    return await _answer(hub, ns, machine_id, await hub.registry.set_drained(ns, machine_id, False))
