"""Placement: which machine of a namespace takes a spawn that names none (POST /api/spawn).

A machine fits when it is online, not drained, has the requested CLI, carries every requested
label, has room under its session limit and has the directory (the hub checks the last on every
machine that passed the rest, in parallel). Among those that fit, the one with the fewest
sessions wins, then the lowest 1-minute load, then the lowest id. Each machine that does not fit
gets one reason, the first that applies in the order of REASONS.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import msgspec

from core.listing import MachineRow
from core.machine_schemas import Labels
from core.names import LABEL_KEY_RE, LABEL_VALUE_RE, MACHINE_ID_RE, MAX_LABELS, valid_machine_id
from core.schemas import Message, Queued, SpawnOrder, SpawnResponse

MAX_PLACEMENT_MACHINES = 1000

# Why a machine did not take a spawn, in the order they are checked.
REASONS = (
    "not_found",  # named in placement.machines, but no machine of this namespace
    "offline",
    "draining",
    "agent_not_installed",  # the CLI asked for is not among those the agent found
    "labels_mismatch",
    "full",  # its sessions reach its --max-sessions
    "directory_not_found",
    "no_answer",  # the path check failed or did not answer within paths_timeout_s
)


LabelKey = Annotated[str, msgspec.Meta(pattern=LABEL_KEY_RE.pattern)]
LabelValue = Annotated[str, msgspec.Meta(pattern=LABEL_VALUE_RE.pattern)]
MachineId = Annotated[str, msgspec.Meta(pattern=MACHINE_ID_RE.pattern)]


class Placement(Message, forbid_unknown_fields=True):
    """Which machines may take the spawn: all of `machines` (when given) that carry all `labels`."""

    labels: Annotated[dict[LabelKey, LabelValue], msgspec.Meta(max_length=MAX_LABELS)] = msgspec.field(
        default_factory=dict
    )
    machines: Annotated[list[MachineId], msgspec.Meta(min_length=1, max_length=MAX_PLACEMENT_MACHINES)] | None = None


class PlacedSpawnRequest(SpawnOrder):
    """Body of POST /api/spawn: a spawn without a machine, and where it may go."""

    placement: Placement | None = None


class PlacedSpawnResponse(SpawnResponse):
    machine_id: str = ""


class PlacedQueued(Queued, omit_defaults=False):
    machine_id: str


class Candidate(Message, omit_defaults=False):
    machine_id: str
    reason: str


class NoMachine(Message, omit_defaults=False):
    """POST /api/spawn when no machine fits: each machine considered, with why not."""

    success: Literal[False]
    code: Literal["no_machine"]
    error: str
    candidates: list[Candidate]


class FleetPaths(Message):
    """POST /api/paths/exists: per online machine, which paths exist; the machines that gave no
    answer (offline meanwhile, no answer within paths_timeout_s, a full mailbox, the check failed)
    under `unanswered` with the reason's code instead."""

    machines: dict[str, dict[str, bool]]
    unanswered: dict[str, str]
    next_cursor: str | None = None


def check_placement(placement: Placement) -> list[str] | None:
    """The named machines (distinct, in order), or None; ValueError names what is wrong and where."""
    if len(placement.labels) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels - at `$.placement.labels`")
    for key, value in placement.labels.items():
        if not LABEL_KEY_RE.fullmatch(key):
            raise ValueError(f"label key {key!r} must match {LABEL_KEY_RE.pattern} - at `$.placement.labels`")
        if not LABEL_VALUE_RE.fullmatch(value):
            raise ValueError(f"label {key}: value must match {LABEL_VALUE_RE.pattern} - at `$.placement.labels.{key}`")
    if placement.machines is None:
        return None
    for i, machine_id in enumerate(placement.machines):
        if not valid_machine_id(machine_id):
            raise ValueError(f"{machine_id!r} is not a machine id - at `$.placement.machines[{i}]`")
    return list(dict.fromkeys(placement.machines))


def refusal(row: MachineRow, agent: str, labels: Labels, *, offline_ok: bool = False) -> str | None:
    """Why this machine cannot take the spawn, before its directory is checked; None if it may.
    With `offline_ok`, an offline machine is judged by what its agent last announced."""
    info = row.info
    if not row.online and not offline_ok:
        return "offline"
    if row.drained:
        return "draining"
    if info is None or info.agents is None or agent not in info.agents:
        return "agent_not_installed"
    if any(info.labels.get(k) != v for k, v in labels.items()):
        return "labels_mismatch"
    if row.online and info.max_sessions and row.beat is not None and row.beat.sessions >= info.max_sessions:
        return "full"
    return None


def preference(row: MachineRow) -> tuple[int, float, str]:
    """Sort key: fewest sessions, then lowest load, then id."""
    beat = row.beat
    load = beat.health.load1 if beat is not None and beat.health is not None else None
    return (beat.sessions if beat is not None else 0, math.inf if load is None else load, row.machine_id)


def latest_seen(rows: list[MachineRow]) -> MachineRow | None:
    """The offline machine a waiting spawn goes to: the one seen most recently."""
    return max(rows, key=lambda r: (r.last_seen or 0, r.machine_id), default=None)


def no_machine(refused: dict[str, str], considered: int) -> NoMachine:
    error = f"No machine fits this spawn ({considered} considered)" if considered else "No machine to consider"
    candidates = [Candidate(machine_id=m, reason=r) for m, r in sorted(refused.items())]
    return NoMachine(success=False, code="no_machine", error=error, candidates=candidates)
