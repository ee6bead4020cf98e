"""Wire types shared by hub and agent: HTTP bodies, job arguments, results and replies.

New fields must get defaults and unknown fields are ignored, so a newer hub and an older agent
keep understanding each other (msgspec's schema-evolution rules).
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal

import msgspec

AgentName = Literal["claude", "codex", "cursor", "gemini", "opencode"]
SessionType = Literal["simple", "worktree"]
MAX_PATHS = 1000
MAX_PATH_BYTES = 4096
MAX_PROMPT_BYTES = 100 * 1024


class JobKind(enum.StrEnum):
    SPAWN = "spawn"
    PATHS = "paths"
    SESSIONS = "sessions"
    STOP = "stop"


# Jobs that change the machine are claimed before they run, so they run at most once and only
# before their claim deadline; read-only jobs just run and are settled in one step.
CLAIMED_KINDS = frozenset({JobKind.SPAWN, JobKind.STOP})


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    UNKNOWN = "unknown"


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.EXPIRED})


class Message(msgspec.Struct, kw_only=True, omit_defaults=True, rename="camel"):
    """Base of every wire type: camelCase JSON as in HAPI, defaults left out."""


class SpawnRequest(Message):
    """Body of POST /api/machines/:id/spawn, and the arguments of a spawn job."""

    directory: str
    agent: AgentName = "claude"
    model: str | None = None
    yolo: bool = False
    session_type: SessionType = "simple"
    worktree_name: str | None = None
    prompt: str | None = None
    reuse_worktree: bool = False


class PathsRequest(Message):
    """Body of POST /api/machines/:id/paths/exists, and the arguments of a paths job."""

    paths: Annotated[list[str], msgspec.Meta(min_length=1, max_length=MAX_PATHS)]


class Worktree(Message):
    path: str
    branch: str
    base_path: str


class SpawnResult(Message):
    """What the agent reports for a spawn; `code` names the failure when success is false."""

    success: bool
    session_id: str | None = None
    directory_created: bool = False
    worktree: Worktree | None = None
    error: str | None = None
    code: str | None = None


class SpawnResponse(SpawnResult):
    """The spawn route's answer: the agent's result plus the job it ran as."""

    job_id: str = ""


class PathsResult(Message):
    exists: dict[str, bool] = msgspec.field(default_factory=dict)
    error: str | None = None
    code: str | None = None


class SessionInfo(Message, omit_defaults=False):
    """A session the agent started that is still running."""

    session_id: str
    job_id: str
    pid: int
    agent: AgentName
    directory: str
    worktree: Worktree | None
    started_at: int
    launcher: str


class SessionsResult(Message):
    sessions: list[SessionInfo] = msgspec.field(default_factory=list)
    error: str | None = None
    code: str | None = None


class StopRequest(Message):
    session_id: str


class StopResult(Message):
    stopped: bool = False
    error: str | None = None
    code: str | None = None


class Envelope(Message):
    """A job as it travels through a machine's mailbox: what to do and where to answer."""

    job_id: str
    kind: JobKind
    args: msgspec.Raw
    reply_to: str
    idempotency: str = ""  # SHA-256 of the caller's Idempotency-Key, if it sent one


class Reply(Message):
    """Pushed onto a hub's inbox when a job reaches a state its waiters care about."""

    job_id: str
    machine_id: str
    state: JobState
    result: msgspec.Raw = msgspec.Raw(b"null")


class JobView(Message, omit_defaults=False):
    """GET /api/jobs/:jobId. Times are Redis-clock epoch milliseconds."""

    id: str
    kind: JobKind
    machine_id: str
    state: JobState
    created_at: int | None
    claimed_at: int | None
    finished_at: int | None
    result: msgspec.Raw | None


class MachineMetadata(Message, omit_defaults=False):
    hostname: str
    platform: str
    version: str
    launcher: str = "pty"


class Machine(Message):
    id: str
    namespace: str
    metadata: MachineMetadata
    last_seen: int


class MachineList(Message):
    machines: list[Machine]


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


class MachineStatusList(Message):
    machines: list[MachineStatus]


class JobSummary(JobView, omit_defaults=False):
    """One item of GET /api/jobs: the job's view plus its latency and failure, if any."""

    latency_ms: int | None = None
    error: str | None = None
    code: str | None = None


class JobPage(Message, omit_defaults=False):
    """GET /api/jobs: newest first; pass `next_cursor` as `cursor` for the next page."""

    jobs: list[JobSummary]
    next_cursor: str | None = None
