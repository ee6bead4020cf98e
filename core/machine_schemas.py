"""Wire types of what a machine is and says: its heartbeat, metadata and health, the machine
listings, renames, and the folder listings of the New session dialog.

Like core/schemas.py (whose rules on new fields hold here too), shared by hub and agent.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from core.schemas import Message, PathString


class Health(Message, omit_defaults=False):
    """How the machine is doing, measured by the agent with each heartbeat; null where its
    platform does not say (memory and uptime come from /proc, on Linux)."""

    cores: int | None
    load1: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    uptime_seconds: int | None


class Beat(Message):
    """What the agent writes with each heartbeat, after its instance id."""

    ttl_ms: int
    in_flight: int = 0
    sessions: int = 0  # sessions it started that still run
    health: Health | None = None


class MachineMetadata(Message, omit_defaults=False):
    hostname: str
    platform: str
    version: str
    launcher: str = "pty"


Labels = dict[str, str]
Agents = dict[str, str | None]  # CLI name -> its version, None when it did not say


class MachineInfo(MachineMetadata):
    """The agent's `info` key: HAPI's metadata plus what the machine can do, written at start and
    when it changes. `agents` maps each CLI found to its version (None: it did not say); None
    for the whole map means the agent never looked (an older agent)."""

    agents: Agents | None = None
    labels: Labels = msgspec.field(default_factory=dict)
    max_sessions: int = 0  # 0: no limit

    def metadata(self) -> MachineMetadata:
        """HAPI's part alone, as the listing's `metadata` shows it."""
        return MachineMetadata(
            hostname=self.hostname, platform=self.platform, version=self.version, launcher=self.launcher
        )


class Machine(Message):
    """One machine of GET /api/machines: HAPI's fields, then what the fleet views add."""

    id: str
    namespace: str
    metadata: MachineMetadata
    last_seen: int
    display_name: str | None
    agents: Agents | None
    labels: Labels
    max_sessions: int | None
    sessions: int | None
    health: Health | None
    drained: bool


class MachineList(Message):
    """GET /api/machines: `nextCursor` only when more machines may follow (pass it as `cursor`)."""

    machines: list[Machine]
    next_cursor: str | None = None


class MachineStatus(Message, omit_defaults=False):
    """GET /api/machines?include=offline: a machine, online or not, with its queue counts.

    `last_seen` is the last heartbeat (Redis clock, ms), or None for a machine never seen.
    """

    id: str
    namespace: str
    metadata: MachineMetadata | None
    last_seen: int | None
    online: bool
    queue_depth: int
    in_flight: int
    display_name: str | None
    agents: Agents | None
    labels: Labels
    max_sessions: int | None
    sessions: int | None
    health: Health | None
    drained: bool


class MachineStatusList(Message):
    machines: list[MachineStatus]
    next_cursor: str | None = None


DISPLAY_NAME_PATTERN = "^[^\\x00-\\x1f\\x7f]*$"
MAX_DISPLAY_NAME = 64


class MachineUpdate(Message):
    """Body of PATCH /api/machines/:id: null or a blank name clears it."""

    display_name: Annotated[str, msgspec.Meta(pattern=DISPLAY_NAME_PATTERN, max_length=MAX_DISPLAY_NAME)] | None


class DirectoryRequest(Message):
    """Body of POST /api/machines/:id/directory, and the arguments of a directory job."""

    path: PathString
    hidden: bool = False


class DirectoryEntry(Message):
    """A sub-folder; `symlink` when it is a link to a folder (inside the agent's roots)."""

    name: str
    path: str
    symlink: bool = False


class DirectoryResult(Message):
    """What the agent reports for a directory job."""

    path: str = ""
    entries: list[DirectoryEntry] = msgspec.field(default_factory=list)
    truncated: bool = False
    error: str | None = None
    code: str | None = None


class DirectoryListing(Message, omit_defaults=False):
    """POST /api/machines/:id/directory: the folder as the agent resolved it and its sub-folders,
    sorted by name, at most MAX_DIRECTORY_ENTRIES (`truncated` says more were left out)."""

    path: str
    entries: list[DirectoryEntry]
    truncated: bool


MAX_DIRECTORY_ENTRIES = 1000


class RecentDirectory(Message, omit_defaults=False):
    path: str
    last_spawned_at: int


class RecentDirectories(Message):
    """GET /api/machines/:id/recent-directories: newest first, distinct, at most 20."""

    directories: list[RecentDirectory]
