"""Rate limits shared by every hub: fixed-window counters in Redis.

A window opens with the first counted request and lasts `WINDOW_MS`; its counter's TTL is the
time left, so `Retry-After` comes from the Redis clock alone (no hub compares clocks). One Lua
script counts a request against every counter and takes the counts back when one is full, so a
refused request uses up nothing (a token hammering past its own limit does not eat its
namespace's budget). The same script checks how many recorded jobs the namespace keeps (its job
index, in the same slot): records are small (a prompt is kept only as its size and digest), so a
cap on their number caps the bytes a namespace stores. Only hubs reach the counters (core.acl);
they share the namespace's hash tag with its job index, so one script touches them all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from core.keys import Keys

WINDOW_MS = 60_000

# KEYS: the counters, then the namespace's job index. ARGV: window ms, one limit per counter (0 = no
# limit), the most jobs the namespace may keep (0 = no limit), how long it keeps them (ms).
# Counts first and takes the counts back on a refusal: a request that passes costs one INCR per
# counter. Returns {0, 0} when counted, else {the 1-based index of what is full, its ms left}.
TAKE = """
local window, counters = tonumber(ARGV[1]), #KEYS - 1
local index = KEYS[#KEYS]
local stored_max, retention = tonumber(ARGV[counters + 2]), tonumber(ARGV[counters + 3])
local counted, full = {}, 0
for i = 1, counters do
  local limit = tonumber(ARGV[i + 1])
  if limit > 0 then
    local count = redis.call('INCR', KEYS[i])
    counted[#counted + 1] = i
    if count == 1 or (count > limit and redis.call('PTTL', KEYS[i]) < 0) then
      redis.call('PEXPIRE', KEYS[i], window)
    end
    if full == 0 and count > limit then full = i end
  end
end
if full == 0 and stored_max > 0 and redis.call('ZCARD', index) >= stored_max then full = counters + 1 end
if full == 0 then return {0, 0} end
for _, i in ipairs(counted) do redis.call('DECR', KEYS[i]) end
if full <= counters then
  local left = redis.call('PTTL', KEYS[full])
  if left < 0 then left = window end
  return {full, left}
end
local oldest = redis.call('ZRANGE', index, 0, 0, 'WITHSCORES')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {full, math.max(1000, tonumber(oldest[2] or now) + retention - now)}
"""

STORED_JOBS = "max_stored_jobs_per_namespace"


@dataclass(frozen=True, slots=True)
class Limit:
    """One counter a request is checked against: the setting's name, its key and its value."""

    name: str
    key: str
    per_window: int


@dataclass(frozen=True, slots=True)
class Refusal:
    limit: Limit
    retry_after_s: int


class RateLimiter:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        self._take = redis.register_script(TAKE)

    def spawn_limits(self, ns: str, token: str, per_namespace: int, per_token: int) -> list[Limit]:
        return [
            Limit("spawns_per_minute_namespace", self.keys.rate_counter(ns, "spawn"), per_namespace),
            Limit("spawns_per_minute_token", self.keys.rate_counter(ns, "spawn", token), per_token),
        ]

    async def take(
        self, limits: Sequence[Limit], *, ns: str = "", max_stored_jobs: int = 0, retention_ms: int = 0
    ) -> Refusal | None:
        """Count one request against every limit (and check the jobs `ns` keeps against
        `max_stored_jobs`), or say which one is full and for how long."""
        active = [limit for limit in limits if limit.per_window > 0]
        if not active and not max_stored_jobs:
            return None
        stored = Limit(STORED_JOBS, self.keys.jobs(ns or "default"), max_stored_jobs if ns else 0)
        index, left_ms = await self._take(
            keys=[*(limit.key for limit in active), stored.key],
            args=[WINDOW_MS, *(limit.per_window for limit in active), stored.per_window, retention_ms],
        )
        if int(index) == 0:
            return None
        limit = stored if int(index) > len(active) else active[int(index) - 1]
        return Refusal(limit, max(1, math.ceil(int(left_ms) / 1000)))
