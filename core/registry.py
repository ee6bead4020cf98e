"""Machines in Redis: heartbeats, what an agent announces, listings, ownership and state changes.

Online means the heartbeat key exists; its TTL runs on the Redis server's clock, so no two
machines' clocks are ever compared. `lastSeen` is derived from the key's remaining TTL on the same
clock. Registration (the `reg` record, the namespace's machine index, the owner record) is written
only by the admin commands (core.admin) and, when Redis lost it, restored by the worker; hubs and
the admin set its `drained` and `displayName` fields, which a machine can never write. Listings
read machines through core.listing.
"""

from __future__ import annotations

import enum
from typing import Any, Literal

import msgspec
from redis.asyncio import Redis

from core import stats
from core.events import EventLog, MachineEvent
from core.keys import Keys, due_member
from core.lua import Scripts
from core.machine_schemas import Beat, MachineMetadata

_beat_decoder = msgspec.json.Decoder(Beat)
_encoder = msgspec.json.Encoder()
INSTANCE_LEN = 32  # uuid4().hex: scripts read it as the first 32 bytes of the heartbeat
REG_FIELDS = ("lastSeenMs", "displayName", "drained")  # what a listing reads of each `reg`


class Ownership(enum.Enum):
    MINE = "mine"
    FOREIGN = "foreign"
    UNKNOWN = "unknown"


def encode_beat(instance: str, beat: Beat) -> bytes:
    return instance.encode() + b" " + _encoder.encode(beat)


def decode_beat(raw: bytes | None) -> tuple[str, Beat] | None:
    if raw is None or len(raw) <= INSTANCE_LEN:
        return None
    try:
        return raw[:INSTANCE_LEN].decode(), _beat_decoder.decode(raw[INSTANCE_LEN + 1 :])
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Registry:
    """Machine records for one key prefix on one Redis client."""

    def __init__(self, redis: Redis, keys: Keys, scripts: Scripts, *, max_events: int = 10_000) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts
        self.events = EventLog(keys, max_events=max_events)

    # The agent's side: only its own keys.

    def announce(self, pipe: Any, ns: str, machine_id: str, metadata: MachineMetadata) -> None:
        """Queue what the machine is (hostname, platform, version...), kept while it is offline too."""
        pipe.set(self.keys.info(ns, machine_id), _encoder.encode(metadata))

    def beat(self, pipe: Any, ns: str, machine_id: str, instance: str, beat: Beat) -> None:
        """Queue a heartbeat: one SET with a TTL; its GET tells whether this instance held it."""
        key = self.keys.heartbeat(ns, machine_id)
        pipe.set(key, encode_beat(instance, beat), px=beat.ttl_ms, get=True)

    async def release(self, ns: str, machine_id: str, instance: str) -> None:
        """Clean stop: the machine leaves the online list at once (only this instance's heartbeat)."""
        await self.scripts.run("RELEASE", [self.keys.heartbeat(ns, machine_id)], [instance])

    # Registration: the admin commands, and the worker when Redis lost it.

    async def claim_id(self, ns: str, machine_id: str) -> bool:
        """The id becomes `ns`'s unless another namespace has it (ids are unique across them)."""
        owner = await self.redis.set(self.keys.owner(machine_id), ns, nx=True, get=True)
        return owner is None or _text(owner) == ns

    async def register(self, ns: str, machine_id: str) -> bool:
        """The registration records: `reg`, the namespace's machine index, the sweep's schedule.
        False (and nothing written) when another namespace owns the id."""
        return bool(await self.register_many([(ns, machine_id)]))

    async def register_many(self, machines: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """`register` for many machines in three round trips; those now registered (the others'
        ids belong to another namespace)."""
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.execute_command("TIME")  # not pipe.time(): a cluster pipeline refuses it by name
            for ns, machine_id in machines:
                pipe.set(k.owner(machine_id), ns, nx=True, get=True)
            (seconds, micros), *owners = await pipe.execute()
        now = int(seconds) * 1000 + int(micros) // 1000
        mine = [(ns, m) for (ns, m), owner in zip(machines, owners, strict=True) if owner in (None, ns.encode())]
        if not mine:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for ns, machine_id in mine:
                pipe.hsetnx(k.reg(ns, machine_id), "addedMs", now)
                pipe.hset(k.reg(ns, machine_id), "namespace", ns)
                pipe.sadd(k.namespaces(), ns)
                pipe.zadd(k.sweep_due("offline"), {due_member(ns, machine_id): now}, nx=True)
                pipe.zadd(k.machines(ns), {machine_id: 0})
            added = (await pipe.execute())[4::5]
        if any(added):
            async with self.redis.pipeline(transaction=False) as pipe:
                for (ns, _), new in zip(mine, added, strict=True):
                    if new:
                        stats.add(pipe, k, ns, stats.REGISTERED)
                await pipe.execute()
        return mine

    # The worker's side.

    async def mark(
        self, ns: str, machine_id: str, state: Literal["online", "offline"], *, last_seen_ms: int | None = None
    ) -> int:
        """Record the machine as online or offline while its heartbeat agrees, and publish the
        change once (one event, one counter change). 1 when it changed, 0 when it did not, -1
        when the machine is not registered, 2 when one never marked online is now offline (no
        event: it was never anything else)."""
        status = (await self.mark_many([(ns, machine_id)], state, last_seen_ms=last_seen_ms))[0]
        if isinstance(status, Exception):
            raise status
        return status

    async def mark_many(
        self, machines: list[tuple[str, str]], state: Literal["online", "offline"], *, last_seen_ms: int | None = None
    ) -> list[int | Exception]:
        """`mark` for many machines in two round trips: each one's status, or the error its own
        keys gave (a machine's user can give its heartbeat the wrong type)."""
        k = self.keys
        last_seen = "" if last_seen_ms is None else last_seen_ms
        calls = [([k.reg(ns, m), k.heartbeat(ns, m)], [state, last_seen]) for ns, m in machines]
        statuses = [a if isinstance(a, Exception) else int(a) for a in await self.scripts.run_many("MARK", calls)]
        if 1 in statuses:
            async with self.redis.pipeline(transaction=False) as pipe:
                for (ns, machine_id), status in zip(machines, statuses, strict=True):
                    if status == 1:
                        self.events.add(pipe, ns, MachineEvent(machine_id=machine_id, state=state))
                        stats.add(pipe, k, ns, stats.ONLINE, 1 if state == "online" else -1)
                await pipe.execute()
        return statuses

    async def lock_sweep(self, lock_ms: int, token: str) -> bool:
        """The sweep's lock, so passes never overlap: taken, or still held under `token` by an
        attempt of the same sweeper whose answer was lost (else that lock would idle till it expires)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.sweep_lock(), token, nx=True, px=lock_ms)
            pipe.get(self.keys.sweep_lock())
            taken, holder = await pipe.execute()
        return bool(taken) or holder == token.encode()

    async def unlock_sweep(self, token: str) -> None:
        await self.scripts.run("UNLOCK", [self.keys.sweep_lock()], [token])

    async def unregister(self, ns: str, machine_id: str) -> None:
        """Delete the machine's `reg` and `info` (core.admin.remove_machine), its drained count with them."""
        k = self.keys
        was_drained = await self.scripts.run("UNREGISTER", [k.reg(ns, machine_id), k.info(ns, machine_id)], [])
        if int(was_drained):
            await self.redis.hincrby(k.stats(), stats.field(ns, stats.DRAINED), -1)

    async def registered(self, ns: str, machine_id: str) -> bool:
        return bool(await self.redis.exists(self.keys.reg(ns, machine_id)))

    # The hub's side.

    async def ownership(self, ns: str, machine_id: str) -> Ownership:
        """Whether the id is registered in `ns`, in another namespace, or nowhere."""
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(k.reg(ns, machine_id))
            pipe.get(k.owner(machine_id))
            mine, owner = await pipe.execute()
        if mine:
            return Ownership.MINE
        if owner is None:
            return Ownership.UNKNOWN
        return Ownership.MINE if owner.decode() == ns else Ownership.FOREIGN

    async def ids(self, ns: str, *, after: str | None, count: int) -> list[str]:
        """Up to `count` registered ids of `ns` after `after`, in id order."""
        start = "-" if after is None else f"({after}"
        return [_text(m) for m in await self.redis.zrangebylex(self.keys.machines(ns), start, "+", 0, count)]

    # Hubs and the admin: fields of `reg` that only they write.

    async def set_drained(self, ns: str, machine_id: str, drained: bool) -> int | None:
        """Drain (no new spawns) or undrain the machine. 1 when this call changed it, 0 when it
        already was, None when `ns` has no such machine. The event and the counter follow a real
        change only, so `machines_drained` counts each machine once."""
        status = await self._set_reg(ns, machine_id, "drained", "1" if drained else "")
        if status == 1:
            async with self.redis.pipeline(transaction=False) as pipe:
                self.events.add(pipe, ns, MachineEvent(machine_id=machine_id, state="updated"))
                stats.add(pipe, self.keys, ns, stats.DRAINED, 1 if drained else -1)
                await pipe.execute()
        return None if status < 0 else status

    async def set_display_name(self, ns: str, machine_id: str, name: str) -> int | None:
        """Name the machine for people ("" clears it): 1 changed, 0 unchanged, None not found."""
        status = await self._set_reg(ns, machine_id, "displayName", name)
        if status == 1:
            await self.events.publish(self.redis, ns, MachineEvent(machine_id=machine_id, state="updated"))
        return None if status < 0 else status

    async def _set_reg(self, ns: str, machine_id: str, field: str, value: str) -> int:
        return int(await self.scripts.run("SET_REG", [self.keys.reg(ns, machine_id)], [field, value]))
