"""Make every data node hold the same machine-hub users (docs/design.md, "Failover").

Redis replicates neither users nor their removal, so a node that was down while a machine was
added, rotated or removed, or a node added later, holds other users than the rest: a removed
machine whose user survives there gets its access back the day that node is promoted. `sync`
reads every node's users with `ACL LIST` (rules and password hashes, never passwords), takes for
each user what most nodes hold (its rules, or that it does not exist; on a tie the first node
wins: the primary under Sentinel, the first Cluster seed that answers), and writes that to the
nodes that differ. Only users named with the deployment's prefix are read or written.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from redis.asyncio import Redis


@dataclass(frozen=True, slots=True)
class NodeChanges:
    """What `sync` changed on one node."""

    node: str
    written: list[str] = field(default_factory=list)  # made, or their rules or passwords reset
    deleted: list[str] = field(default_factory=list)


def rules_of(line: str) -> tuple[str, tuple[str, ...]]:
    """`user NAME RULE...` from ACL LIST as (name, rules), a selector `(...)` kept as one rule."""
    words = line.split(" ")
    if len(words) < 2 or words[0] != "user":
        raise ValueError(f"not an ACL LIST line: {line[:80]!r}")
    rules: list[str] = []
    open_selector = False
    for word in words[2:]:
        if open_selector:
            rules[-1] += " " + word
        else:
            rules.append(word)
        open_selector = rules[-1].startswith("(") and not rules[-1].endswith(")")
    return words[1], tuple(rules)


async def users_of(node: Redis, prefix: str) -> dict[str, tuple[str, ...]]:
    lines = await node.execute_command("ACL", "LIST")
    listed = (rules_of(line.decode() if isinstance(line, bytes) else str(line)) for line in lines)
    return {name: rules for name, rules in listed if name.startswith(f"{prefix}~")}


def version(rules: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """A user as a node holds it (None: not at all), compared as a set of rules: ACL LIST names
    them in an order that depends on the node's history (the commands a user may run, above all)."""
    return None if rules is None else tuple(sorted(rules))


def agreed(held: list[dict[str, tuple[str, ...]]]) -> dict[str, tuple[str, ...] | None]:
    """For each user any node holds: its rules on most nodes, or None when most have no such user."""
    out: dict[str, tuple[str, ...] | None] = {}
    for name in sorted({name for users in held for name in users}):
        versions = [users.get(name) for users in held]
        counts = Counter(map(version, versions))
        top = max(counts.values())
        out[name] = next(v for v in versions if counts[version(v)] == top)  # the first node's, on a tie
    return out


def _address(node: Redis) -> str:
    where = node.connection_pool.connection_kwargs
    return f"{where['host']}:{where['port']}" if "host" in where else str(where.get("path", "?"))


async def sync(nodes: list[Redis], prefix: str) -> list[NodeChanges]:
    """Give every node the users most nodes agree on; what changed, node by node."""
    held = [await users_of(node, prefix) for node in nodes]
    wanted = agreed(held)
    changes = []
    for node, users in zip(nodes, held, strict=True):
        done = NodeChanges(_address(node))
        for name, rules in wanted.items():
            if version(users.get(name)) == version(rules):
                continue
            if rules is None:
                await node.execute_command("ACL", "DELUSER", name)  # Redis closes its connections
                done.deleted.append(name)
            else:
                await node.execute_command("ACL", "SETUSER", name, "reset", *rules)
                # Sessions opened with a password this node should no longer take end now.
                await node.execute_command("CLIENT", "KILL", "USER", name)
                done.written.append(name)
        changes.append(done)
    return changes
