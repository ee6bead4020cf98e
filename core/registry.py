"""Machines in Redis: registration, heartbeats, the online list and the owner lookup.

Online means the heartbeat key exists; its TTL runs on the Redis server's clock, so no two
machines' clocks are ever compared. `lastSeen` is the Redis time of the last heartbeat.
"""

from __future__ import annotations

import enum
from typing import Literal

import msgspec
from redis.asyncio import Redis

from core import scripts
from core.errors import RegistrationError
from core.events import EventLog, MachineEvent
from core.keys import Keys
from core.names import valid_namespace
from core.schemas import Machine, MachineMetadata, MachineStatus

_metadata_decoder = msgspec.json.Decoder(MachineMetadata)


class Ownership(enum.Enum):
    MINE = "mine"
    FOREIGN = "foreign"
    UNKNOWN = "unknown"


class Fleet(msgspec.Struct, frozen=True):
    """One namespace's counts, read from Redis at once for the shared metrics."""

    registered: int
    online: int
    queued: int
    running: int
    finished: dict[str, int]


def _metadata(raw: bytes | None) -> MachineMetadata | None:
    if raw is None:
        return None
    try:
        return _metadata_decoder.decode(raw)
    except msgspec.DecodeError:
        return None


class Registry:
    """Machine records for one key prefix on one Redis client."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._heartbeat = redis.register_script(scripts.HEARTBEAT)
        self._release = redis.register_script(scripts.RELEASE)
        self._set_state = redis.register_script(scripts.SET_STATE)
        self.events = EventLog(keys)

    async def register(self, ns: str, machine_id: str, metadata: MachineMetadata) -> None:
        """Claim the id for `ns` (first registration wins) and record the machine. Idempotent."""
        k = self.keys
        if not await self.redis.set(k.owner(machine_id), ns, nx=True):
            owner = await self.redis.get(k.owner(machine_id))
            if owner is not None and owner.decode() != ns:
                raise RegistrationError(
                    f"machine id {machine_id!r} is registered in namespace {owner.decode()!r}, not {ns!r}; "
                    "use another --machine-id or --home for this namespace"
                )
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.sadd(k.machines(ns), machine_id)
            pipe.hset(k.info(ns, machine_id), "metadata", msgspec.json.encode(metadata))
            await pipe.execute()

    async def heartbeat(self, ns: str, machine_id: str, instance: str, metadata: bytes, ttl_ms: int) -> bool:
        """Refresh the heartbeat; False when the registration record is gone (Redis lost data)."""
        k = self.keys
        out = await self._heartbeat(
            keys=[k.heartbeat(ns, machine_id), k.info(ns, machine_id)], args=[instance, metadata, ttl_ms]
        )
        return bool(out)

    async def release(self, ns: str, machine_id: str, instance: str) -> None:
        """Clean stop: the machine leaves the online list at once."""
        await self._release(keys=[self.keys.heartbeat(ns, machine_id)], args=[instance])

    async def set_state(self, ns: str, machine_id: str, state: Literal["online", "offline"]) -> bool:
        """Record the machine as online or offline and publish the change; False if unchanged."""
        if not await self._set_state(keys=[self.keys.info(ns, machine_id)], args=[state]):
            return False
        await self.events.publish(self.redis, ns, MachineEvent(machine_id=machine_id, state=state))
        return True

    async def online(self, ns: str) -> list[Machine]:
        """Online machines of one namespace, sorted by id; cost grows only with that namespace."""
        ids = sorted(m.decode() for m in await self.redis.smembers(self.keys.machines(ns)))
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for machine_id in ids:
                pipe.hmget(self.keys.heartbeat(ns, machine_id), "seenMs", "metadata")
            rows = await pipe.execute()
        machines = []
        for machine_id, (seen, metadata) in zip(ids, rows, strict=True):
            if seen is None or metadata is None:
                continue
            try:
                meta = _metadata_decoder.decode(metadata)
            except msgspec.DecodeError:
                continue
            machines.append(Machine(id=machine_id, namespace=ns, metadata=meta, last_seen=int(seen)))
        return machines

    async def ownership(self, ns: str, machine_id: str) -> Ownership:
        """Whether the id is registered in `ns`, in another namespace, or nowhere.

        The namespace's own record decides first, so an owner record overwritten by another
        namespace's agent can at worst turn a 404 into a 403, never deny the real owner.
        """
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(k.info(ns, machine_id))
            pipe.get(k.owner(machine_id))
            mine, owner = await pipe.execute()
        if mine:
            return Ownership.MINE
        if owner is None:
            return Ownership.UNKNOWN
        return Ownership.MINE if owner.decode() == ns else Ownership.FOREIGN

    async def machine_ids(self, ns: str) -> list[str]:
        """Ids of every machine registered in `ns`, online or not, sorted."""
        return sorted(m.decode() for m in await self.redis.smembers(self.keys.machines(ns)))

    async def statuses(self, ns: str) -> list[MachineStatus]:
        """Every registered machine of `ns`, online or not, sorted by id, with its queue counts."""
        ids = sorted(m.decode() for m in await self.redis.smembers(self.keys.machines(ns)))
        if not ids:
            return []
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            for machine_id in ids:
                pipe.hmget(k.heartbeat(ns, machine_id), "seenMs", "metadata")
                pipe.hmget(k.info(ns, machine_id), "lastSeenMs", "metadata")
                pipe.llen(k.mailbox(ns, machine_id))
                pipe.scard(k.running(ns, machine_id))
            rows = await pipe.execute()
        out = []
        for i, machine_id in enumerate(ids):
            (seen, hb_meta), (last_seen, info_meta), depth, in_flight = rows[4 * i : 4 * i + 4]
            online = seen is not None and hb_meta is not None
            out.append(
                MachineStatus(
                    id=machine_id,
                    namespace=ns,
                    metadata=_metadata(hb_meta) if online else _metadata(info_meta),
                    last_seen=int(seen) if online else (int(last_seen) if last_seen is not None else None),
                    online=online,
                    queue_depth=int(depth),
                    in_flight=int(in_flight),
                )
            )
        return out

    async def namespaces(self) -> list[str]:
        """Every namespace that has registered a machine (a SCAN: for metrics, not requests)."""
        head, tail = f"{self.keys.prefix}:ns:", ":machines"
        found: set[str] = set()
        async for key in self.redis.scan_iter(match=f"{head}*{tail}", count=1000):
            name = key.decode()[len(head) : -len(tail)]
            if valid_namespace(name) and self.keys.machines(name) == key.decode():
                found.add(name)
        return sorted(found)

    async def fleet(self, ns: str) -> Fleet:
        """Machines online, jobs queued (mailbox lengths), running, and final-state counters of `ns`."""
        ids = [m.decode() for m in await self.redis.smembers(self.keys.machines(ns))]
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            for machine_id in ids:
                pipe.exists(k.heartbeat(ns, machine_id))
                pipe.llen(k.mailbox(ns, machine_id))
                pipe.scard(k.running(ns, machine_id))
                pipe.hgetall(k.stats(ns, machine_id))
            rows = await pipe.execute() if ids else []
        online = queued = running = 0
        finished: dict[str, int] = {}
        for i in range(len(ids)):
            alive, depth, in_flight, stats = rows[4 * i : 4 * i + 4]
            online += int(bool(alive))
            queued += int(depth)
            running += int(in_flight)
            for state, count in stats.items():
                name = state.decode() if isinstance(state, bytes) else str(state)
                finished[name] = finished.get(name, 0) + int(count)
        return Fleet(registered=len(ids), online=online, queued=queued, running=running, finished=finished)
