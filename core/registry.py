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
from core.schemas import Machine, MachineMetadata

_metadata_decoder = msgspec.json.Decoder(MachineMetadata)


class Ownership(enum.Enum):
    MINE = "mine"
    FOREIGN = "foreign"
    UNKNOWN = "unknown"


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
