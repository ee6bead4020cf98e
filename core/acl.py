"""Who may do what in Redis: the ACL rules of every machine-hub Redis user (docs/design.md, "Trust").

A machine's user reaches exactly its own heartbeat, metadata, mailbox and job records, and may
push (LPUSH, nothing else) onto hubs' inboxes to answer; hubs, the worker and the token command
each get the commands and key patterns their work needs and nothing of @admin or @dangerous.
Commands are listed one by one (never a category), so a new Redis command is never granted by
accident. Patterns use Redis 7 key permissions (%R~ read, %W~ write, ~ both) and one selector.
"""

from __future__ import annotations

from core.keys import Keys

ROLES = ("hub", "worker", "tokens")

# Commands the agent sends itself, or runs through its scripts (CLAIM, COMPLETE, RECOVER, RELEASE).
MACHINE_COMMANDS = ("ping", "evalsha", "get", "set", "del", "pttl", "blmpop", "time", "wait")

# Data commands of the hub: its own requests and the scripts it runs (ENQUEUE, PUSH_READ, ATTACH,
# ABANDON, SET_REG, ADD_WEBHOOK), listings, events, tokens (read), fleet counters, webhooks and their logs.
HUB_COMMANDS = (
    *("ping", "evalsha", "script|load", "script|exists", "time", "wait"),
    *("get", "mget", "set", "exists", "pttl", "incr", "decr", "pexpire", "del"),
    *("hget", "hmget", "hgetall", "hset", "hdel", "hincrby", "hlen"),
    *("lpush", "lpop", "llen", "lrange", "blmpop"),
    *("zadd", "zrangebylex", "zrevrangebyscore", "zscore", "zcard"),
    *("sadd", "smembers", "xadd", "xread", "xrevrange"),
)

# The worker's sweeps and trims, the webhook feed (XREAD, its lease: RENEW, UNLOCK) and deliveries
# (LOG_DELIVERY), and arq (its queues, job and result keys, health keys).
WORKER_COMMANDS = (
    *("ping", "evalsha", "script|load", "script|exists", "time", "psubscribe", "punsubscribe"),
    *("get", "set", "del", "exists", "pttl", "pexpire", "psetex", "setex", "expire", "incrby"),
    *("hget", "hmget", "hgetall", "hset", "hsetnx", "hincrby", "hdel", "hexists"),
    *("lpush", "rpush", "lrange", "llen", "ltrim"),
    *("zadd", "zrem", "zrange", "zrangebyscore", "zremrangebyscore", "zcard", "zscore", "zincrby"),
    *("sadd", "srem", "smembers", "xadd", "xtrim", "xread"),
    *("watch", "unwatch", "multi", "exec", "discard", "info", "dbsize"),
)

TOKEN_COMMANDS = ("ping", "hget", "hset", "hdel", "hgetall")


def machine_user(keys: Keys, ns: str, machine_id: str) -> str:
    """`<prefix>~<namespace>~<machine>`: `~` is in no name, so two machines never share a user."""
    return f"{keys.prefix}~{ns}~{machine_id}"


def service_user(keys: Keys, role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    return f"{keys.prefix}~{role}"


# What redis-py's cluster client asks every node when it (re)reads the topology.
CLUSTER_COMMANDS = ("cluster|slots", "cluster|shards", "cluster|nodes", "command")


def _commands(names: tuple[str, ...], db: int, cluster: bool = False) -> list[str]:
    # SELECT only where the deployment is not on database 0; a user never needs to switch.
    extra = (["+select"] if db else []) + ([f"+{c}" for c in CLUSTER_COMMANDS] if cluster else [])
    return ["-@all", *(f"+{name}" for name in names), *extra]


def machine_rules(keys: Keys, ns: str, machine_id: str, *, db: int = 0, cluster: bool = False) -> list[str]:
    base = keys.machine_base(ns, machine_id)
    own = [f"~{base}:{kind}" for kind in ("hb", "info", "mailbox", "job:*")]
    answer = f"(+lpush %W~{keys.inbox_pattern()})"
    return [*_commands(MACHINE_COMMANDS, db, cluster), "resetkeys", *own, "resetchannels", answer]


def service_rules(keys: Keys, role: str, *, db: int = 0, cluster: bool = False) -> list[str]:
    p = keys.prefix
    if role == "hub":
        patterns = [f"~{p}:m:*", f"~{p}:ns:*", f"~{p}:hub:*", f"%R~{p}:tokens:*", f"%R~{p}:owner:*"]
        patterns += [f"%RW~{p}:stats", f"%R~{p}:namespaces", f"~{p}:rl:*", f"%W~{keys.webhook_namespaces()}"]
        patterns += [f"%W~{keys.waiting_due()}"]
        return [*_commands(HUB_COMMANDS, db, cluster), "resetkeys", *patterns, "resetchannels"]
    if role == "worker":
        patterns = [f"~{p}:m:*", f"~{p}:ns:*", f"~{p}:sweep:*", f"~{p}:owner:*", f"~{p}:stats", f"~{p}:namespaces"]
        patterns += [f"%W~{keys.inbox_pattern()}", f"~{p}:worker", f"~{p}:worker:*", "~arq:*", f"~{p}:webhooks:*"]
        patterns += [f"~{keys.waiting_due()}"]
        channels = [f"&{keys.heartbeat_channel_pattern(db)}"]
        return [*_commands(WORKER_COMMANDS, db, cluster), "resetkeys", *patterns, "resetchannels", *channels]
    if role == "tokens":
        return [*_commands(TOKEN_COMMANDS, db, cluster), "resetkeys", f"~{p}:tokens:*", "resetchannels"]
    raise ValueError(f"unknown role {role!r}")
