"""What an operator does with an admin Redis URL: add, rotate and remove machines, set up the
service users of hubs, workers and the token command (core.acl holds their rules).

Every user gets a random password shown once, in the URL it is to use. Redis keeps ACL users
only in memory unless it runs with an ACL file, so each change ends with ACL SAVE when it does.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from core import acl, stats, topology, user_sync
from core.connections import REDIS_FAILURES, request_client
from core.errors import AdminError
from core.keys import Keys, due_member
from core.leftovers import redis_now_ms
from core.lua import Scripts
from core.names import valid_machine_id, valid_namespace
from core.registry import Registry
from core.settings import Settings
from core.sweeps import Sweeper

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Credentials:
    user: str
    url: str
    rotated: bool = False  # the user existed: its old password no longer works


@dataclass(frozen=True, slots=True)
class MachineEntry:
    machine_id: str
    user: str
    has_user: bool  # False when Redis lost the user (no ACL file) or it was never made here
    state: str
    drained: bool = False


def user_url(base_url: str, user: str, password: str) -> str:
    """`base_url` (any userinfo dropped) with this user's credentials."""
    parts = urlsplit(base_url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='~')}:{quote(password, safe='')}@{host}"))


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Admin:
    """Operator actions on one deployment (key prefix) through an admin client."""

    def __init__(self, redis: Redis, settings: Settings, *, public_url: str = "") -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.public_url = public_url or settings.redis_url
        self.db = (
            int(urlsplit(settings.redis_url).path.strip("/") or 0) if settings.redis_url.startswith("redis") else 0
        )
        self.scripts = Scripts(redis, can_load=True)

    @contextlib.asynccontextmanager
    async def _nodes(self) -> AsyncIterator[list[Redis]]:
        """Every data node: Redis replicates neither users nor configuration (Sentinel, Cluster)."""
        if not (self.settings.redis_sentinels or self.settings.redis_cluster):
            yield [self.redis]
            return
        nodes = await topology.data_nodes(self.settings, self.redis)
        try:
            yield nodes
        finally:
            for node in nodes:
                await node.aclose()

    async def _setuser(self, user: str, rules: list[str]) -> tuple[str, bool]:
        """Create or reset `user` with a new password on every node; whether it existed."""
        password = secrets.token_urlsafe(32)
        try:
            async with self._nodes() as nodes:
                existed = False
                for node in nodes:
                    existed |= await node.execute_command("ACL", "GETUSER", user) is not None
                    await node.execute_command("ACL", "SETUSER", user, "reset", "on", f">{password}", *rules)
                    # Sessions opened with the old password end now, not at their next reconnect.
                    await node.execute_command("CLIENT", "KILL", "USER", user)
                await self._save(nodes)
        except ResponseError as exc:
            if "No such user" in str(exc):
                return password, existed
            raise AdminError(f"Redis refused to manage users ({exc}): REDIS_URL must be an admin URL") from None
        return password, existed

    async def _deluser(self, user: str) -> int:
        async with self._nodes() as nodes:
            deleted = 0
            for node in nodes:  # Redis closes the user's connections itself
                deleted = max(deleted, int(await node.execute_command("ACL", "DELUSER", user)))
            if deleted:
                await self._save(nodes)
        return deleted

    async def sync_users(self) -> tuple[list[user_sync.NodeChanges], bool]:
        """Give every data node the users most of them hold (core.user_sync); whether they were saved."""
        try:
            async with self._nodes() as nodes:
                return await user_sync.sync(nodes, self.keys.prefix), await self._save(nodes)
        except ResponseError as exc:
            raise AdminError(f"Redis refused to manage users ({exc}): REDIS_URL must be an admin URL") from None

    async def save(self) -> bool:
        """Persist the users (ACL SAVE) on every node; False when Redis has no ACL file."""
        async with self._nodes() as nodes:
            return await self._save(nodes)

    async def _save(self, nodes: list[Redis]) -> bool:
        saved = True
        for node in nodes:
            try:
                await node.execute_command("ACL", "SAVE")
            except ResponseError as exc:
                if "not configured" not in str(exc).lower() and "aclfile" not in str(exc).lower():
                    raise AdminError(f"ACL SAVE failed: {exc}") from None
                log.warning("Redis runs without an ACL file: users are lost when it restarts (%s)", exc)
                saved = False
        return saved

    async def configure_notifications(self, flags: str) -> str:
        """Add `flags` to every node's notify-keyspace-events (keeping what is set); the result."""
        wanted = flags
        try:
            async with self._nodes() as nodes:
                for node in nodes:
                    current = await node.config_get("notify-keyspace-events")
                    wanted = "".join(sorted(set(_s(current.get("notify-keyspace-events", ""))) | set(flags)))
                    await node.config_set("notify-keyspace-events", wanted)
        except ResponseError as exc:
            raise AdminError(f"Redis refused CONFIG ({exc}): REDIS_URL must be an admin URL") from None
        return wanted

    async def still_works(self, url: str) -> bool:
        """Whether `url` still authenticates (so `setup` may keep it)."""
        if not url.startswith(("redis://", "rediss://", "unix://")):
            return False
        client = request_client(msgspec.structs.replace(self.settings, redis_url=url))
        try:
            return bool(await client.ping())
        except REDIS_FAILURES:
            return False
        finally:
            await client.aclose()

    async def add_service(self, role: str) -> Credentials:
        user = acl.service_user(self.keys, role)
        password, existed = await self._setuser(
            user, acl.service_rules(self.keys, role, db=self.db, cluster=self.settings.redis_cluster)
        )
        return Credentials(user, user_url(self.public_url, user, password), existed)

    async def add_machine(self, ns: str, machine_id: str = "") -> tuple[str, Credentials]:
        """Register the machine in `ns` (a new id if none is given) and give it its own user."""
        if not valid_namespace(ns):
            raise AdminError(f"namespace {ns!r} must match [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}")
        machine_id = machine_id or "machine_" + secrets.token_hex(8)
        if not valid_machine_id(machine_id):
            raise AdminError(f"machine id {machine_id!r} must match [A-Za-z0-9][A-Za-z0-9._-]{{0,127}}")
        registry = Registry(self.redis, self.keys, self.scripts)
        if not await registry.claim_id(ns, machine_id):
            raise AdminError(f"machine id {machine_id!r} belongs to another namespace; choose another id")
        await self.scripts.load()
        user = acl.machine_user(self.keys, ns, machine_id)
        rules = acl.machine_rules(self.keys, ns, machine_id, db=self.db, cluster=self.settings.redis_cluster)
        password, existed = await self._setuser(user, rules)
        await registry.register(ns, machine_id)
        return machine_id, Credentials(user, user_url(self.public_url, user, password), existed)

    async def remove_machine(self, ns: str, machine_id: str) -> bool:
        """Delete its user (Redis closes its connections), take it offline and unregister it.

        Jobs waiting for it fail at once; its job records stay until they expire.
        """
        k = self.keys
        if not valid_namespace(ns) or not valid_machine_id(machine_id):
            return False
        user = acl.machine_user(k, ns, machine_id)
        try:
            deleted = await self._deluser(user)
        except ResponseError as exc:
            raise AdminError(f"Redis refused to manage users ({exc}): REDIS_URL must be an admin URL") from None
        registered = bool(await self.redis.exists(k.reg(ns, machine_id)))
        await self.redis.delete(k.heartbeat(ns, machine_id))
        if registered:
            sweeper = Sweeper(self.redis, k, self.settings)
            await sweeper.transitions.went_offline(ns, machine_id, last_seen_ms=await redis_now_ms(self.redis))
        removed = await self.redis.zrem(k.machines(ns), machine_id)
        owner = await self.redis.get(k.owner(machine_id))
        await Registry(self.redis, k, self.scripts).unregister(ns, machine_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            if owner is not None and _s(owner) == ns:
                pipe.delete(k.owner(machine_id))
            for state in ("online", "offline"):
                pipe.zrem(k.sweep_due(state), due_member(ns, machine_id))
            if removed:
                stats.add(pipe, k, ns, stats.REGISTERED, -1)
            await pipe.execute()
        return bool(deleted or registered or removed)

    async def drain(self, ns: str, machine_id: str, drained: bool) -> bool:
        """Drain or undrain the machine as a hub does (one event and counter change when it flips);
        whether it changed. AdminError when `ns` has no such machine."""
        changed = None
        if valid_namespace(ns) and valid_machine_id(machine_id):
            changed = await Registry(self.redis, self.keys, self.scripts).set_drained(ns, machine_id, drained)
        if changed is None:
            raise AdminError(f"no machine {machine_id!r} in namespace {ns}")
        return changed == 1

    async def machines(self, ns: str) -> list[MachineEntry]:
        """The machines registered in `ns`, each with whether its Redis user exists."""
        k = self.keys
        ids = [_s(m) for m in await self.redis.zrange(k.machines(ns), 0, -1)]
        users = {_s(u) for u in await self.redis.execute_command("ACL", "USERS")}
        async with self.redis.pipeline(transaction=False) as pipe:
            for machine_id in ids:
                pipe.exists(k.heartbeat(ns, machine_id))
                pipe.hget(k.reg(ns, machine_id), "drained")
            out = await pipe.execute()
        return [
            MachineEntry(
                m,
                acl.machine_user(k, ns, m),
                acl.machine_user(k, ns, m) in users,
                "online" if beating else "offline",
                drained == b"1",
            )
            for m, beating, drained in zip(ids, out[::2], out[1::2], strict=True)
        ]
