"""The one settings object of every machine-hub process, read from the environment once.

Every field maps to exactly one environment variable: `REDIS_URL` and `CLI_API_TOKEN` keep the
names HAPI users know, every other field is `MACHINE_HUB_` plus its upper-cased name. Only the
entry points call `Settings.from_env()`; everything below takes the object as an argument.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import msgspec

from core.errors import SettingsError

ENV_PREFIX = "MACHINE_HUB_"
UNPREFIXED = frozenset({"redis_url", "cli_api_token"})
BRANCH_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,39}$")


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Configuration shared by hub, agent and CLI; tests build it directly."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    cli_api_token: str = ""
    key_prefix: str = "mh"

    # Redis client timeouts. Blocking pops get block_s + redis_socket_timeout_s.
    redis_connect_timeout_s: float = 1.0
    redis_socket_timeout_s: float = 2.0
    block_s: float = 10.0
    reconnect_max_s: float = 2.0

    # Hub.
    host: str = "127.0.0.1"
    port: int = 3006
    max_body_bytes: int = 4 * 1024 * 1024
    shutdown_drain_s: float = 3.0
    spawn_claim_timeout_s: float = 10.0
    spawn_timeout_s: float = 30.0
    paths_timeout_s: float = 10.0
    job_retention_s: float = 86400.0
    paths_job_retention_s: float = 60.0
    idempotency_ttl_s: float = 86400.0
    job_history_per_machine: int = 1000
    max_events: int = 10_000
    metrics_token: str = ""  # when set, GET /metrics needs `Authorization: Bearer <it>`
    max_event_streams: int = 100  # open GET /api/events streams per hub process; more get 503

    # Agent.
    namespace: str = "default"
    machine_id: str = ""
    home: str = "~/.machine-hub"
    heartbeat_interval_s: float = 5.0
    heartbeat_ttl_s: float = 15.0
    roots: tuple[str, ...] = ()
    agent_commands: dict[str, list[str]] = msgspec.field(default_factory=dict)
    spawn_settle_s: float = 1.0
    worktree_branch_prefix: str = "mh-"
    max_concurrent_jobs: int = 64
    session_stop_grace_s: float = 5.0
    launcher: str = "auto"  # tmux when it is installed, else the pseudo-terminal launcher; or tmux | pty
    tmux_socket: str = "machine-hub"
    # Background worker (arq): sweeps, history trimming, its own health key.
    sweep_interval_s: float = 5.0  # whole seconds: arq's cron runs on wall-clock second marks
    trim_interval_s: float = 60.0
    worker_health_check_interval_s: float = 10.0

    # Test hook: the agent SIGKILLs itself at this point of a spawn (after_claim, after_intent,
    # after_spawn, before_complete) so tests can prove what a crash there leaves behind.
    failpoint: str = ""

    def __post_init__(self) -> None:
        if self.heartbeat_ttl_s <= self.heartbeat_interval_s:
            raise SettingsError("heartbeat_ttl_s must be longer than heartbeat_interval_s")
        if self.spawn_claim_timeout_s > self.spawn_timeout_s:
            raise SettingsError("spawn_claim_timeout_s must not exceed spawn_timeout_s")
        if not BRANCH_PREFIX_RE.match(self.worktree_branch_prefix):
            raise SettingsError(f"worktree_branch_prefix {self.worktree_branch_prefix!r} is not a usable branch prefix")
        if self.launcher not in ("auto", "tmux", "pty"):
            raise SettingsError(f"launcher must be auto, tmux or pty, not {self.launcher!r}")
        for name in ("block_s", "redis_socket_timeout_s", "redis_connect_timeout_s", "heartbeat_interval_s"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be positive")

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] = os.environ, overrides: Mapping[str, object] | None = None
    ) -> Settings:
        """Settings from `environ`; `overrides` (command-line options, None = not given) win."""
        raw: dict[str, object] = {}
        for field in msgspec.structs.fields(cls):
            value = environ.get(env_name(field.name))
            if value is None:
                continue
            raw[field.name] = _parse(field.name, value)
        raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
        try:
            return msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise SettingsError(f"invalid configuration: {exc}") from exc

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        env: dict[str, str] = {}
        for name, value in msgspec.structs.asdict(self).items():
            if isinstance(value, str):
                env[env_name(name)] = value
            elif isinstance(value, tuple):
                env[env_name(name)] = os.pathsep.join(value)
            else:
                env[env_name(name)] = msgspec.json.encode(value).decode()
        return env


def env_name(field: str) -> str:
    return field.upper() if field in UNPREFIXED else ENV_PREFIX + field.upper()


def _parse(name: str, value: str) -> object:
    if name == "roots":
        return tuple(p for p in value.split(os.pathsep) if p)
    if name == "agent_commands":
        try:
            return msgspec.json.decode(value.encode())
        except msgspec.DecodeError as exc:
            raise SettingsError(f"{env_name(name)} must be a JSON object of argv lists: {exc}") from exc
    return value
