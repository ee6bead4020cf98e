"""The Redis key layout: the only place a key string is formed (docs/design.md, "Keys").

A machine's keys share the Redis Cluster hash tag `{<namespace>:<machine>}`, so every script runs
in one slot, and one ACL key pattern per key kind confines a machine's own Redis user to exactly
its keys (core.acl). Everything a machine may not touch lies outside `<prefix>:m:{<ns>:<id>}:`:
the registration record `reg`, idempotency records, tokens, indexes and streams.

Names a hub or worker reads from data a machine can write (a hub id in an envelope, a job id in a
mailbox) go through the `parse_*` checks below before any key is built from them.
"""

from __future__ import annotations

import hashlib
import re

import msgspec

from core.names import valid_machine_id, valid_namespace

PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
HUB_ID_RE = re.compile(r"^[0-9a-f]{16}$")
_JOB_TAIL_RE = re.compile(r"^[0-9a-f]{32}$")
WEBHOOK_ID_RE = re.compile(r"^wh_[0-9a-f]{16}$")


def valid_prefix(prefix: str) -> bool:
    """A prefix holds no glob character, ':' or '~', so ACL patterns and user names stay exact."""
    return PREFIX_RE.fullmatch(prefix) is not None


def valid_hub_id(hub_id: str) -> bool:
    return HUB_ID_RE.fullmatch(hub_id) is not None


def valid_job_id(job_id: str, machine_id: str) -> bool:
    """`<machine id>.<32 hex>` of exactly this machine."""
    head, dot, tail = job_id.rpartition(".")
    return bool(dot) and head == machine_id and _JOB_TAIL_RE.fullmatch(tail) is not None


def valid_webhook_id(webhook_id: str) -> bool:
    """`wh_<16 hex>`, as the hub makes them; anything else names no webhook (and no key)."""
    return WEBHOOK_ID_RE.fullmatch(webhook_id) is not None


class Keys(msgspec.Struct, frozen=True):
    """Key builder for one prefix; tests use a fresh prefix each for isolation."""

    prefix: str

    def __post_init__(self) -> None:
        if not valid_prefix(self.prefix):
            raise ValueError(f"key prefix {self.prefix!r} must match {PREFIX_RE.pattern}")

    # A machine's keys. The agent's own user may use hb, info, mailbox, job:* and nothing else.

    def machine_base(self, ns: str, machine_id: str) -> str:
        return f"{self.prefix}:m:{{{ns}:{machine_id}}}"

    def heartbeat(self, ns: str, machine_id: str) -> str:
        """STRING `<instance> <json>` with a TTL, written by the agent: online means it exists."""
        return f"{self.machine_base(ns, machine_id)}:hb"

    def info(self, ns: str, machine_id: str) -> str:
        """STRING: the metadata the agent last announced, kept while it is offline."""
        return f"{self.machine_base(ns, machine_id)}:info"

    def mailbox(self, ns: str, machine_id: str) -> str:
        return f"{self.machine_base(ns, machine_id)}:mailbox"

    def job(self, ns: str, machine_id: str, job_id: str) -> str:
        return f"{self.machine_base(ns, machine_id)}:job:{job_id}"

    def waiting(self, ns: str, machine_id: str) -> str:
        """SET of the machine's spawns waiting for it to come online (core.waiting); hubs and the worker."""
        return f"{self.machine_base(ns, machine_id)}:waiting"

    def reg(self, ns: str, machine_id: str) -> str:
        """HASH written only by the admin, hubs and the worker: the machine is registered in `ns`."""
        return f"{self.machine_base(ns, machine_id)}:reg"

    def idempotency(self, ns: str, machine_id: str, key_digest: str) -> str:
        return f"{self.machine_base(ns, machine_id)}:idem:{key_digest}"

    # Namespace-wide keys: written by trusted processes only.

    def machines(self, ns: str) -> str:
        """ZSET (all scores 0, ordered by id) of the machines registered in `ns`."""
        return f"{self.prefix}:ns:{{{ns}}}:machines"

    def jobs(self, ns: str) -> str:
        """ZSET of the namespace's recorded job ids (spawn, stop), scored by creation (Redis clock, ms)."""
        return f"{self.prefix}:ns:{{{ns}}}:jobs"

    def events(self, ns: str) -> str:
        """STREAM of the namespace's machine and job events, for live views."""
        return f"{self.prefix}:ns:{{{ns}}}:events"

    def tokens(self, ns: str) -> str:
        """HASH sha256(token) -> record: the namespace's issued tokens, the only copy."""
        return f"{self.prefix}:tokens:{{{ns}}}"

    def rate_counter(self, ns: str, action: str, token: str | None = None) -> str:
        """Fixed-window counter of `action` in `ns`, or of one bearer token in it (by its SHA-256)."""
        base = f"{self.prefix}:rl:{{{ns}}}:{action}"
        return base if token is None else f"{base}:t:{hashlib.sha256(token.encode()).hexdigest()}"

    def owner(self, machine_id: str) -> str:
        """STRING: the namespace a machine id belongs to (ids are unique across namespaces)."""
        return f"{self.prefix}:owner:{machine_id}"

    def namespaces(self) -> str:
        """SET of the namespaces that have registered machines."""
        return f"{self.prefix}:namespaces"

    def stats(self) -> str:
        """HASH of fleet counters (`<namespace> <name>` -> count), so a metrics scrape is one read."""
        return f"{self.prefix}:stats"

    def webhooks(self, ns: str) -> str:
        """HASH webhook id -> record (URL, events, signing secret): the namespace's webhooks."""
        return f"{self.prefix}:ns:{{{ns}}}:webhooks"

    def webhook_deliveries(self, ns: str, webhook_id: str) -> str:
        """LIST of a webhook's last delivery attempts, newest first (core.webhooks)."""
        if not valid_webhook_id(webhook_id):
            raise ValueError(f"not a webhook id: {webhook_id!r}")
        return f"{self.prefix}:ns:{{{ns}}}:webhook:{webhook_id}:deliveries"

    def webhook_cursor(self, ns: str) -> str:
        """STRING: the id of the last event of the namespace's stream the webhook feed handled."""
        return f"{self.prefix}:ns:{{{ns}}}:webhooks:cursor"

    def webhook_namespaces(self) -> str:
        """SET of the namespaces that have (or had) webhooks: the streams the worker follows."""
        return f"{self.prefix}:webhooks:{{webhooks}}:namespaces"

    def webhook_lock(self) -> str:
        """STRING: the lease of the one worker that reads the streams for webhooks."""
        return f"{self.prefix}:webhooks:{{webhooks}}:lock"

    def inbox(self, hub_id: str) -> str:
        """LIST where agents push replies for one hub process; agents may only LPUSH here."""
        if not valid_hub_id(hub_id):
            raise ValueError(f"not a hub id: {hub_id!r}")
        return f"{self.prefix}:hub:{{{hub_id}}}:inbox"

    def inbox_pattern(self) -> str:
        return f"{self.prefix}:hub:*:inbox"

    # The worker's own keys.

    def sweep_due(self, state: str) -> str:
        """ZSET `<ns>:<machine>` -> when the sweep looks at that machine next, for `online` or `offline`."""
        return f"{self.prefix}:sweep:{{sweep}}:{state}"

    def waiting_due(self) -> str:
        """ZSET `<ns>:<job id>` -> when the worker looks next at that waiting spawn (core.waiting)."""
        return f"{self.prefix}:waiting:{{waiting}}:due"

    def placed(self, ns: str, key_digest: str) -> str:
        """STRING `<machine id> <fingerprint>`: where POST /api/spawn put an Idempotency-Key's spawn."""
        return f"{self.prefix}:ns:{{{ns}}}:placed:{key_digest}"

    def sweep_lock(self) -> str:
        return f"{self.prefix}:sweep:{{sweep}}:lock"

    def heartbeat_channel_pattern(self, db: int) -> str:
        """Keyspace notifications of every heartbeat key (created or deleted)."""
        return f"__keyspace@{db}__:{self.prefix}:m:*:hb"

    # Reading names back: only ever from trusted or validated sources.

    def parse_heartbeat_channel(self, channel: str) -> tuple[str, str] | None:
        """(namespace, machine id) of a heartbeat keyspace channel, or None when it is not one."""
        _, sep, key = channel.partition("__:")
        return self.parse_heartbeat(key) if sep else None

    def parse_heartbeat(self, key: str) -> tuple[str, str] | None:
        head = f"{self.prefix}:m:{{"
        if not key.startswith(head) or not key.endswith("}:hb"):
            return None
        ns, sep, machine_id = key[len(head) : -len("}:hb")].partition(":")
        if not sep or not valid_namespace(ns) or not valid_machine_id(machine_id):
            return None
        return ns, machine_id


def due_member(ns: str, machine_id: str) -> str:
    return f"{ns}:{machine_id}"


def parse_due_member(member: str) -> tuple[str, str] | None:
    ns, sep, machine_id = member.partition(":")
    if not sep or not valid_namespace(ns) or not valid_machine_id(machine_id):
        return None
    return ns, machine_id


def waiting_member(ns: str, job_id: str) -> str:
    return f"{ns}:{job_id}"


def parse_waiting_member(member: str) -> tuple[str, str, str] | None:
    """(namespace, machine id, job id) of a waiting schedule's member, or None."""
    ns, sep, job_id = member.partition(":")
    machine_id = job_id.rpartition(".")[0]
    if not sep or not valid_namespace(ns) or not valid_job_id(job_id, machine_id):
        return None
    return ns, machine_id, job_id
