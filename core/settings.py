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
from core.keys import valid_prefix
from core.names import parse_labels, valid_namespace

ENV_PREFIX = "MACHINE_HUB_"
LIMIT_FIELDS = (
    "header_timeout_s",
    "body_timeout_s",
    "keep_alive_timeout_s",
    "max_header_bytes",
    "max_connections",
    "max_requests_in_flight",
    "event_stream_recheck_s",
)
COUNT_FIELDS = (
    "spawns_per_minute_namespace",
    "spawns_per_minute_token",
    "max_event_streams",
    "max_event_streams_per_namespace",
    "max_event_streams_per_token",
    "max_stored_jobs_per_namespace",
)
WEBHOOK = ("webhook_timeout_s", "webhook_retry_base_s", "webhook_retry_window_s", "webhook_max_in_flight")
# Tuples read from a comma-separated variable; the other tuples are os.pathsep lists.
COMMA_LISTS = frozenset({"shared_secret_namespaces", "redis_sentinels", "redis_cluster_nodes", "labels"})
UNPREFIXED = frozenset({"redis_url", "cli_api_token"})
BRANCH_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,39}$")


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Configuration shared by hub, agent and CLI; tests build it directly."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    # A file holding the Redis URL (and so its password), read at start instead of REDIS_URL.
    redis_url_file: str = ""
    redis_ca: str = ""  # CA certificate file that a rediss:// server's certificate must chain to
    # Redis behind Sentinel: the sentinels (host:port, comma-separated) and the primary's name; the
    # user, password, database and scheme still come from REDIS_URL (its host is not used then).
    redis_sentinels: tuple[str, ...] = ()
    redis_master: str = "mymaster"
    redis_cluster: bool = False  # REDIS_URL names one node of a Redis Cluster
    redis_cluster_nodes: tuple[str, ...] = ()  # more Cluster nodes (host:port) to find it through
    # arq's own Redis (the worker's queue): arq cannot run on a Cluster. Default: REDIS_URL.
    worker_redis_url: str = ""
    # Replicas a claim (agent) or an abandon (hub) must reach before either acts on it (WAIT), so
    # that a failover cannot lose the one write that decides whether a spawn runs.
    redis_wait_replicas: int = 0
    redis_wait_timeout_s: float = 0.5
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
    idempotency_ttl_s: float = 86400.0
    max_events: int = 10_000
    metrics_token: str = ""  # when set, GET /metrics needs `Authorization: Bearer <it>`
    max_event_streams: int = 500  # open GET /api/events streams per hub process (a backstop); more get 503
    max_stored_jobs_per_namespace: int = 20_000  # recorded jobs a namespace keeps (retention); more get 429
    max_queued_jobs: int = 256  # envelopes waiting in one machine's mailbox; more are refused (429)

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
    # Exit (status 3) instead of retrying when Redis refuses this machine's credentials.
    exit_if_removed: bool = False
    session_stop_grace_s: float = 5.0
    launcher: str = "auto"  # tmux when it is installed, else the pseudo-terminal launcher; or tmux | pty
    tmux_socket: str = "machine-hub"
    labels: tuple[str, ...] = ()  # `key=value` each: what placement can match this machine by
    max_sessions: int = 0  # sessions this agent runs at once; a spawn beyond it fails (machine_full); 0: no limit
    cli_probe_interval_s: float = 600.0  # how often the agent asks each CLI for its version again
    # Background worker (arq): sweeps, history trimming, its own health key.
    sweep_interval_s: float = 5.0  # whole seconds: arq's cron runs on wall-clock second marks
    trim_interval_s: float = 60.0
    offline_recheck_s: float = 30.0  # how often the sweep looks again at a machine that is offline
    worker_health_check_interval_s: float = 10.0
    # Webhooks (README "Webhooks"): hubs keep them, the worker delivers them.
    max_webhooks_per_namespace: int = 20
    webhook_timeout_s: float = 10.0  # one attempt, name lookup and connecting included
    webhook_retry_base_s: float = 10.0  # the delay before the first retry; each next one doubles
    webhook_retry_max_s: float = 3600.0  # the longest delay between two attempts
    webhook_retry_window_s: float = 86400.0  # no attempt starts later than this after the event
    webhook_allow_private: bool = False  # deliver to loopback, private and link-local addresses too
    webhook_max_in_flight: int = 50  # attempts one worker process runs at once

    # Hub limits against slow, many and greedy clients (README "Limits"). A count of 0 turns a
    # rate or stream limit off.
    header_timeout_s: float = 10.0  # request line and headers, from their first byte (api/protocol.py)
    body_timeout_s: float = 10.0  # the whole body, once the headers are in
    keep_alive_timeout_s: float = 5.0  # an idle connection between requests
    max_header_bytes: int = 64 * 1024
    max_connections: int = 10_000  # open connections per hub process; more get 503 and are closed
    max_requests_in_flight: int = 4096  # per hub process, not counting event streams and probes
    spawns_per_minute_namespace: int = 60  # shared by every hub (Redis counters)
    spawns_per_minute_token: int = 30
    max_event_streams_per_namespace: int = 50  # per hub process
    max_event_streams_per_token: int = 10
    event_stream_recheck_s: float = 2.0  # an open stream re-checks its token this often
    # Namespaces the shared secret CLI_API_TOKEN may grant (`S:<ns>`); "*" is any.
    shared_secret_namespaces: tuple[str, ...] = ("*",)

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
        if not valid_prefix(self.key_prefix):
            raise SettingsError(f"key_prefix {self.key_prefix!r} must be 1 to 32 of A-Z a-z 0-9 . _ -")
        if self.redis_sentinels and self.redis_cluster:
            raise SettingsError("choose Sentinel (MACHINE_HUB_REDIS_SENTINELS) or a Cluster, not both")
        if self.redis_cluster_nodes and not self.redis_cluster:
            raise SettingsError("MACHINE_HUB_REDIS_CLUSTER_NODES needs MACHINE_HUB_REDIS_CLUSTER=1")
        if self.redis_cluster and not self.worker_redis_url:
            raise SettingsError("with a Redis Cluster, MACHINE_HUB_WORKER_REDIS_URL must name arq's own Redis")
        if self.redis_wait_replicas < 0:
            raise SettingsError("redis_wait_replicas must not be negative")
        if self.max_queued_jobs < 1:
            raise SettingsError("max_queued_jobs must be at least 1")
        if self.webhook_retry_max_s < self.webhook_retry_base_s:
            raise SettingsError("webhook_retry_max_s must not be shorter than webhook_retry_base_s")
        if self.max_webhooks_per_namespace < 0:
            raise SettingsError("max_webhooks_per_namespace must not be negative (0: no webhooks)")
        if self.max_sessions < 0:
            raise SettingsError("max_sessions must not be negative (0: no limit)")
        try:
            parse_labels(self.labels)
        except ValueError as exc:
            raise SettingsError(f"labels: {exc}") from None
        for name in (
            "block_s",
            "redis_socket_timeout_s",
            "redis_connect_timeout_s",
            "heartbeat_interval_s",
            "cli_probe_interval_s",
            *WEBHOOK,
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be positive")
        self._check_limits()

    def _check_limits(self) -> None:
        for name in LIMIT_FIELDS:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be positive")
        for name in COUNT_FIELDS:
            if getattr(self, name) < 0:
                raise SettingsError(f"{name} must not be negative (0 turns it off)")
        for ns in self.shared_secret_namespaces:
            if ns != "*" and not valid_namespace(ns):
                raise SettingsError(f"shared_secret_namespaces: {ns!r} is not a namespace name")

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
        if raw.get("redis_url_file"):
            raw["redis_url"] = _read_url(str(raw["redis_url_file"]))
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
                env[env_name(name)] = ("," if name in COMMA_LISTS else os.pathsep).join(value)
            else:
                env[env_name(name)] = msgspec.json.encode(value).decode()
        return env


def env_name(field: str) -> str:
    return field.upper() if field in UNPREFIXED else ENV_PREFIX + field.upper()


def _read_url(path: str) -> str:
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            url = f.read().strip()
    except OSError as exc:
        raise SettingsError(f"{env_name('redis_url_file')}: cannot read {path}: {exc.strerror or exc}") from exc
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError(f"{env_name('redis_url_file')}: {path} does not hold a redis:// or rediss:// URL")
    return url


def _parse(name: str, value: str) -> object:
    if name == "roots":
        return tuple(p for p in value.split(os.pathsep) if p)
    if name in COMMA_LISTS:
        return tuple(p.strip() for p in value.split(",") if p.strip())
    if name == "agent_commands":
        try:
            return msgspec.json.decode(value.encode())
        except msgspec.DecodeError as exc:
            raise SettingsError(f"{env_name(name)} must be a JSON object of argv lists: {exc}") from exc
    return value
