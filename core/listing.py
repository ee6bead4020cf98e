"""Pages of a namespace's machines, in id order, each costing O(its page).

The namespace's machine index is walked from a cursor; a page reads the rows of the ids it walks
in one round trip. A page of online machines walks at most `SCAN_FACTOR` ids per machine it may
return, so a namespace where most machines are offline gives short pages with a cursor, never a
slow request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from core.machine_schemas import Beat, MachineInfo
from core.registry import REG_FIELDS, Registry, decode_beat

SCAN_FACTOR = 10
MAX_PAGE = 1000
_info_decoder = msgspec.json.Decoder(MachineInfo)


@dataclass(frozen=True, slots=True)
class MachineRow:
    """One machine of a listing, read in one pipeline with the others of its page."""

    machine_id: str
    online: bool
    info: MachineInfo | None  # what the agent last announced; None if never, or unreadable
    last_seen: int | None
    beat: Beat | None  # the live heartbeat's counts and health; None while offline
    queue_depth: int
    display_name: str | None
    drained: bool


@dataclass(frozen=True, slots=True)
class MachinePage:
    rows: list[MachineRow]
    next_after: str | None  # the last id walked, when more may follow


def _info(raw: bytes | None) -> MachineInfo | None:
    if raw is None:
        return None
    try:
        return _info_decoder.decode(raw)
    except msgspec.DecodeError:
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def rows(registry: Registry, ns: str, machine_ids: list[str]) -> list[MachineRow]:
    """The listing view of these machines, in one round trip: per machine its heartbeat and `info`,
    the heartbeat's TTL, the `reg` fields a listing shows and its mailbox length."""
    if not machine_ids:
        return []
    k = registry.keys
    async with registry.redis.pipeline(transaction=False) as pipe:
        # Not pipe.time(): a cluster pipeline refuses it by name; sent like this, TIME goes to one
        # node, whose clock stands for all (the nodes' clocks are kept in step).
        pipe.execute_command("TIME")
        for machine_id in machine_ids:
            # One MGET for the heartbeat and `info`: a machine's keys share its hash slot. Most of a
            # page's time is redis-py's work per command, so four commands a row, not five. Not
            # pipe.mget(): a cluster pipeline refuses it by name, though both keys are in one slot.
            pipe.execute_command("MGET", k.heartbeat(ns, machine_id), k.info(ns, machine_id))
            pipe.pttl(k.heartbeat(ns, machine_id))
            pipe.hmget(k.reg(ns, machine_id), *REG_FIELDS)
            pipe.llen(k.mailbox(ns, machine_id))
        out = await pipe.execute()
    seconds, micros = out[0]
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    found = []
    for i, machine_id in enumerate(machine_ids):
        (raw_beat, info), pttl, (last_seen, display_name, drained), depth = out[1 + 4 * i : 5 + 4 * i]
        beat = decode_beat(raw_beat)
        online = beat is not None and int(pttl) > 0
        if online and beat is not None:
            seen: int | None = now_ms - max(0, beat[1].ttl_ms - int(pttl))
        else:
            seen = int(last_seen) if last_seen is not None else None
        found.append(
            MachineRow(
                machine_id=machine_id,
                online=online,
                info=_info(info),
                last_seen=seen,
                beat=beat[1] if online and beat is not None else None,
                queue_depth=int(depth),
                display_name=_text(display_name) if display_name is not None else None,
                drained=drained == b"1",
            )
        )
    return found


async def machine_page(registry: Registry, ns: str, *, after: str | None, limit: int, online_only: bool) -> MachinePage:
    budget = limit * SCAN_FACTOR if online_only else limit + 1
    page: list[MachineRow] = []
    walked = 0
    while walked < budget:
        batch = min(budget - walked, limit + 1 if not online_only else max(limit, 100))
        ids = await registry.ids(ns, after=after, count=batch + 1)  # one more: is there a next page?
        more, ids = len(ids) > batch, ids[:batch]
        for row in await rows(registry, ns, ids):
            if online_only and not row.online:
                after = row.machine_id
                continue
            if len(page) == limit:
                return MachinePage(page, after)
            page.append(row)
            after = row.machine_id
        walked += len(ids)
        if not more:
            return MachinePage(page, None)
        if len(page) == limit:  # full at the batch's end: reading another batch would only confirm it
            return MachinePage(page, after)
    return MachinePage(page, after)
