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

# A path never holds NUL (the OS cannot take it): the decoder refuses it (400), so no agent is
# asked about one. Blank paths and directories get the routes' own 400s; the API description
# (api/openapi.py) says both in PATH_PATTERN: no NUL, and a character that str.strip() keeps.
NO_NUL = "^[^\\x00]*$"
_KEPT_BY_STRIP = "[^\\x00\\t-\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
PATH_PATTERN = f"^[^\\x00]*{_KEPT_BY_STRIP}[^\\x00]*$"
Directory = Annotated[str, msgspec.Meta(pattern=NO_NUL)]
PathString = Annotated[
    str,
    msgspec.Meta(
        pattern=NO_NUL,
        extra_json_schema={"maxLength": MAX_PATH_BYTES, "description": f"at most {MAX_PATH_BYTES} bytes as UTF-8"},
    ),
]


class JobKind(enum.StrEnum):
    SPAWN = "spawn"
    PATHS = "paths"
    SESSIONS = "sessions"
    STOP = "stop"
    DIRECTORY = "directory"


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

    directory: Directory
    agent: AgentName = "claude"
    # One argument of the CLI: a leading '-' would make it an option, so it starts with anything else.
    model: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    yolo: bool = False
    session_type: SessionType = "simple"
    worktree_name: str | None = None
    prompt: Annotated[str, msgspec.Meta(extra_json_schema={"maxLength": MAX_PROMPT_BYTES})] | None = None
    reuse_worktree: bool = False


MAX_WAIT_FOR_MACHINE_S = 86_400


class SpawnOrder(SpawnRequest):
    """Body of POST /api/machines/:id/spawn: the spawn, and how long it may wait for an offline
    machine to come online (the agent gets the spawn alone)."""

    # Whole seconds, 1 to MAX_WAIT_FOR_MACHINE_S, checked by the route: a float, as JSON Schema's
    # "integer" takes 60.0 too.
    wait_for_machine_s: float | None = None

    def spawn(self) -> SpawnRequest:
        return SpawnRequest(**{f: getattr(self, f) for f in SpawnRequest.__struct_fields__})


class Queued(Message, omit_defaults=False):
    """202 to a spawn that waits for its machine: the job to follow (GET /api/jobs/:id)."""

    job_id: str
    state: Literal["queued"]


class SpawnRecord(SpawnRequest):
    """A spawn's arguments as its job record keeps them: the prompt only by size and digest."""

    prompt_bytes: int | None = None
    prompt_sha256: str | None = None


class PathsRequest(Message):
    """Body of POST /api/machines/:id/paths/exists, and the arguments of a paths job."""

    paths: Annotated[list[PathString], msgspec.Meta(min_length=1, max_length=MAX_PATHS)]


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
    """A job as it travels through a machine's mailbox: what to do and where to answer.

    `secret` is made by the hub for this job alone; only a reply carrying it is taken as the
    machine's answer, since any machine may push onto a hub's inbox.
    """

    job_id: str
    kind: JobKind
    args: msgspec.Raw
    reply_to: str  # the asking hub's id (core.keys.Keys.inbox)
    secret: str = ""
    idempotency: str = ""  # SHA-256 of the caller's Idempotency-Key, if it sent one


class Reply(Message):
    """Pushed onto a hub's inbox when a job ends; `origin` is true on the asking hub's copy."""

    job_id: str
    machine_id: str
    state: JobState
    result: msgspec.Raw = msgspec.Raw(b"null")
    secret: str = ""
    origin: bool = False


class JobRecord(Message):
    """A recorded job as the scripts store it (core.scripts); `args` and `result` are JSON texts."""

    kind: JobKind
    machine_id: str
    state: JobState
    args: str = ""
    result: str = ""
    reply_to: str = ""
    secret: str = ""
    waiters: str = ""  # hub ids that joined, separated by spaces
    created_ms: int | None = None
    claim_by: int | None = None
    deadline_ms: int | None = None
    claimed_by: str = ""
    claimed_ms: int | None = None
    finished_ms: int | None = None
    recovered_by: str = ""
    wait_ms: int | None = None  # a spawn waiting for its machine (waitForMachineS): claim_by ends the wait


class JobFacts(Message, omit_defaults=False):
    """What a job's view and its item in a listing share. Times are Redis-clock epoch milliseconds."""

    id: str
    kind: JobKind
    machine_id: str
    state: JobState
    created_at: int | None
    claimed_at: int | None
    finished_at: int | None
    result: msgspec.Raw | None
    waiting_until: int | None = None  # a spawn sent with waitForMachineS: the end of its wait


class JobView(JobFacts, omit_defaults=False):
    """GET /api/jobs/:jobId."""

    # What the record keeps of the request: a spawn's body with the prompt only by size and SHA-256.
    args: msgspec.Raw | None = None


class JobSummary(JobFacts, omit_defaults=False):
    """One item of GET /api/jobs: the job's view plus its latency and failure, if any."""

    latency_ms: int | None = None
    error: str | None = None
    code: str | None = None


class JobPage(Message, omit_defaults=False):
    """GET /api/jobs: newest first; pass `next_cursor` as `cursor` for the next page."""

    jobs: list[JobSummary]
    next_cursor: str | None = None


# A display name a person reads in lists: no control characters, 64 at most (as in HAPI).
