"""The machines listing's wire view of a listing row (core.listing.MachineRow)."""

from __future__ import annotations

from typing import Any

from core.listing import MachineRow
from core.machine_schemas import Machine, MachineStatus


def _fleet(row: MachineRow) -> dict[str, Any]:
    """The fields the fleet views add to HAPI's: the agent's info, the live beat, `reg`'s fields."""
    info = row.info
    return {
        "display_name": row.display_name,
        "agents": info.agents if info is not None else None,
        "labels": info.labels if info is not None else {},
        "max_sessions": (info.max_sessions or None) if info is not None else None,  # 0 is no limit
        "sessions": row.beat.sessions if row.beat is not None else None,
        "health": row.beat.health if row.beat is not None else None,
        "drained": row.drained,
    }


def machine(ns: str, row: MachineRow) -> Machine | None:
    """HAPI's view of an online machine; None when its agent never said what it is."""
    if row.info is None or row.last_seen is None:
        return None
    return Machine(
        id=row.machine_id, namespace=ns, metadata=row.info.metadata(), last_seen=row.last_seen, **_fleet(row)
    )


def machine_status(ns: str, row: MachineRow) -> MachineStatus:
    return MachineStatus(
        id=row.machine_id,
        namespace=ns,
        metadata=row.info.metadata() if row.info is not None else None,
        last_seen=row.last_seen,
        online=row.online,
        queue_depth=row.queue_depth,
        in_flight=row.beat.in_flight if row.beat is not None else 0,
        **_fleet(row),
    )
