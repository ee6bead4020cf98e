"""The Lua scripts of machines, sweeps and webhooks: a heartbeat released, a machine marked
online or offline, its mailbox drained and the jobs it left settled, a field of its registration
set, its registration removed, and the locks and logs of the worker (docs/design.md, "Sweeps
without scans"). The job transitions are in core/scripts.py; core/lua.py runs both by SHA. Each
script re-checks what its caller saw, so a sweep run twice, or on two workers at once, changes
each thing once.
"""

from __future__ import annotations

from core.scripts import NOW, RECORD

# A stopping agent removes only its own heartbeat.
RELEASE = """
local hb = KEYS[1]
local instance = ARGV[1]
local beat = redis.call('GET', hb)
if beat and string.sub(beat, 1, 32) == instance then return redis.call('DEL', hb) end
return 0
"""

# The worker's sweeps (core.sweeps). Each re-checks what the sweep saw, so a sweep run twice, or
# on two workers at once, changes each thing once.

# online | offline, only while the heartbeat agrees: 1 when the state changed, 0 when it did not,
# -1 when the machine has no registration record (never added, removed, or lost with Redis data).
MARK = (
    NOW
    + """
local reg, hb = KEYS[1], KEYS[2]
local state, last_seen = ARGV[1], ARGV[2]
if redis.call('EXISTS', reg) == 0 then return -1 end
local beating = redis.call('EXISTS', hb) == 1
if beating ~= (state == 'online') then return 0 end
local was = redis.call('HGET', reg, 'state')
if was == state then return 0 end
redis.call('HSET', reg, 'state', state, 'stateSinceMs', now_ms())
if last_seen ~= '' then redis.call('HSET', reg, 'lastSeenMs', last_seen) end
-- A machine never marked online that goes offline: no event, and it was never counted online.
if not was and state == 'offline' then return 2 end
return 1
"""
)

# Takes every envelope off the mailbox of a machine without a heartbeat (oldest last).
DRAIN = """
local mailbox, hb = KEYS[1], KEYS[2]
if redis.call('EXISTS', hb) == 1 then return {} end
local items = redis.call('LRANGE', mailbox, 0, -1)
redis.call('DEL', mailbox)
return items
"""

# A job left behind by a machine that went offline or restarted: queued -> failed while there is no
# heartbeat; running -> unknown when the instance that claimed it no longer holds the heartbeat.
ORPHAN = (
    NOW
    + """
local job, hb = KEYS[1], KEYS[2]
local offline_result = ARGV[1]
"""
    + RECORD
    + """
local beat = redis.call('GET', hb)
if rec.state == 'queued' then
  if beat then return {'alive'} end
  -- A waiting job waits for its machine to come back; the worker ends it at its deadline (WAITING).
  if rec.waitMs then return {'alive'} end
  rec.state, rec.result, rec.finishedMs = 'failed', offline_result, now_ms()
  save()
  return {'failed', rec.kind or '', rec.replyTo or '', rec.waiters or '', rec.secret or ''}
end
if rec.state == 'running' then
  if beat and string.sub(beat, 1, 32) == rec.claimedBy then return {'alive'} end
  rec.state, rec.published = 'unknown', true
  save()
  return {'unknown', rec.kind or ''}
end
return {'skip', rec.state}
"""
)

# One field of a registered machine's `reg`, set, or cleared with '': 1 when this changed it, 0 when
# it held that already, -1 when the machine is not registered (here, in this namespace). Never
# creates a `reg` of its own: a machine removed meanwhile stays removed.
SET_REG = """
local reg = KEYS[1]
local field, value = ARGV[1], ARGV[2]
if not redis.call('HGET', reg, 'addedMs') then return -1 end
local current = redis.call('HGET', reg, field)
if value == '' then
  if not current then return 0 end
  redis.call('HDEL', reg, field)
  return 1
end
if current == value then return 0 end
redis.call('HSET', reg, field, value)
return 1
"""

# A machine's registration and what it announced, gone: 1 when it was drained (its counter goes down).
UNREGISTER = """
local reg, info = KEYS[1], KEYS[2]
local drained = redis.call('HGET', reg, 'drained')
redis.call('DEL', reg, info)
if drained == '1' then return 1 end
return 0
"""

# The sweep's lock: released only by the pass that holds it.
UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Webhooks (core.webhooks, core.webhook_feed).

# A webhook is added only below the namespace's limit (0 when it is not). The namespace's first
# webhook also moves the feed's cursor to its creation, so the feed does not read the events of a
# time without webhooks; a later one is sent only events after its own creation (core.webhook_feed).
ADD_WEBHOOK = """
local hooks, cursor = KEYS[1], KEYS[2]
local limit, id, record, start = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local count = redis.call('HLEN', hooks)
if count >= limit then return 0 end
redis.call('HSET', hooks, id, record)
if count == 0 then redis.call('SET', cursor, start) else redis.call('SET', cursor, start, 'NX') end
return 1
"""

# An attempt joins a webhook's delivery log only while the webhook exists, so a webhook removed
# during a delivery leaves no log behind; the log keeps the newest ARGV[3] entries.
LOG_DELIVERY = """
local hooks, log = KEYS[1], KEYS[2]
if redis.call('HEXISTS', hooks, ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', log, ARGV[2])
redis.call('LTRIM', log, 0, tonumber(ARGV[3]) - 1)
return 1
"""

# A lease extended only by its holder (the webhook feed's lock).
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


ALL = {
    name: source
    for name, source in globals().items()
    if name.isupper() and name not in ("NOW", "RECORD") and isinstance(source, str)
}
