"""Runs the scripts of core.scripts and core.machine_scripts by SHA, and loads them where the caller is allowed to.

Machines may only EVALSHA: EVAL and SCRIPT LOAD would let one run any Lua, including a loop that
blocks Redis for everyone. Hubs, the worker and the admin load every script (SCRIPT LOAD) at the
first NOSCRIPT, e.g. after Redis restarted, and the worker checks on every sweep pass, so a machine
that meets NOSCRIPT waits briefly and tries again. NOSCRIPT means the script did not run, which is
the one case where sending a script again is always safe.
"""

from __future__ import annotations

import hashlib
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import MovedError, NoScriptError, TryAgainError

from core import machine_scripts, scripts
from core.errors import ScriptsNotLoaded

ALL = scripts.ALL | machine_scripts.ALL
SHA = {name: hashlib.sha1(source.encode()).hexdigest() for name, source in ALL.items()}


class Scripts:
    """The scripts on one client; `can_load` says whether this client's user may SCRIPT LOAD."""

    def __init__(self, redis: Redis, *, can_load: bool) -> None:
        self.redis = redis
        self.can_load = can_load

    async def load(self, names: list[str] | None = None) -> None:
        # One call per script, not a pipeline: a cluster client sends each to every primary.
        for name in names or list(ALL):
            await self.redis.script_load(ALL[name])

    async def ensure(self) -> int:
        """Load the scripts Redis lacks (one SCRIPT EXISTS when none is missing); how many were.

        After a failover the new primary has none: Redis does not replicate its script cache."""
        present = await self.redis.script_exists(*SHA.values())
        missing = [name for name, there in zip(SHA, present, strict=True) if not there]
        if missing:
            await self.load(missing)
        return len(missing)

    async def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self.redis.evalsha(SHA[name], len(keys), *keys, *args)
        except NoScriptError:
            if not self.can_load:
                raise ScriptsNotLoaded(f"Redis has not loaded the {name} script yet") from None
        await self.load()
        return await self.redis.evalsha(SHA[name], len(keys), *keys, *args)

    async def run_many(self, name: str, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run the script once per (keys, args), in one pipeline; each call's answer, or the
        exception it raised (a machine can give its own keys the wrong type: that call fails alone).
        Only calls that met NOSCRIPT, and so did not run, are sent again once loaded."""
        out: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in (1, 2):
            async with self.redis.pipeline(transaction=False) as pipe:
                for i in todo:
                    keys, args = calls[i]
                    # Not pipe.evalsha(): a cluster pipeline refuses it by name; sent like this, each
                    # goes to the node of its keys.
                    pipe.execute_command("EVALSHA", SHA[name], len(keys), *keys, *args)
                answers = await pipe.execute(raise_on_error=False)
            for i, answer in zip(todo, answers, strict=True):
                out[i] = answer
            todo = [i for i in todo if isinstance(out[i], NoScriptError)]
            if not todo:
                break
            if attempt == 2 or not self.can_load:
                raise ScriptsNotLoaded(f"Redis has not loaded the {name} script yet")
            await self.load()
        return out

    async def run_and_wait(
        self, name: str, keys: list[str], args: list[Any], *, replicas: int, timeout_ms: int
    ) -> tuple[Any, int]:
        """Run the script, then WAIT for `replicas` replicas to hold its writes: how many did.

        Both on one connection (WAIT counts that connection's writes), in one round trip. In a
        cluster both go to the node that owns the script's keys as this client last knew it, and
        are not redirected: after a failover moved the slot, the script comes back MOVED, unrun
        (a redirected script would run on another connection than its WAIT, which would then
        count nothing of it), and is sent again where the slot is now.
        """
        cluster = hasattr(self.redis, "get_node_from_key")
        unredirected: dict[str, Any] = {"allow_redirections": False} if cluster else {}
        for attempt in (1, 2):
            send: dict[str, Any] = {}
            if cluster:
                await self.redis.initialize()  # a no-op unless a failure reset the client's topology
                send["target_nodes"] = self.redis.get_node_from_key(keys[0])
            try:
                # The first error is raised (the script's before its WAIT's): redis-py 5.3.1's cluster
                # pipeline can fail with AttributeError when asked to return errors instead.
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.execute_command("EVALSHA", SHA[name], len(keys), *keys, *args, **send)
                    pipe.execute_command("WAIT", replicas, timeout_ms, **send)
                    out, acked = await pipe.execute(**unredirected)
            except NoScriptError:
                if attempt == 2:
                    raise
                if not self.can_load:
                    raise ScriptsNotLoaded(f"Redis has not loaded the {name} script yet") from None
                await self.load()
                continue
            except (MovedError, TryAgainError):
                if attempt == 2:
                    raise
                await self.redis.exists(keys[0])  # redirected, as keyed commands are: the client learns the owner
                continue
            return out, int(acked)
        raise AssertionError("unreachable")
