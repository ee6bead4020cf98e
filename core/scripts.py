"""The Lua scripts behind every job transition; each reads the clock with Redis TIME.

States: queued -> running -> succeeded | failed | unknown(-> final later); queued -> expired.
Claim and abandon both act only on `queued`, so exactly one of them wins a job: a job the hub
abandoned can never run, and a job the agent claimed is never reported as not started.
"""

from __future__ import annotations

NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: heartbeat, mailbox, job, idempotency, info, job history, stats
# ARGV: job id, kind, args to keep on the record, mailbox envelope, claim timeout ms, timeout ms,
#       retention ms, idempotency record ('' for none), idempotency ttl ms, machine id,
#       offline result, reply inbox, history length
ENQUEUE = (
    NOW
    + """
if redis.call('EXISTS', KEYS[5]) == 0 then return {'unknown'} end
if ARGV[8] ~= '' then
  local existing = redis.call('GET', KEYS[4])
  if existing then return {'duplicate', existing} end
end
if redis.call('EXISTS', KEYS[3]) == 1 then return {'exists', ARGV[1]} end
redis.call('ZADD', KEYS[6], now, ARGV[1])
local extra = redis.call('ZCARD', KEYS[6]) - tonumber(ARGV[13])
if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[6], 0, extra - 1) end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[3], 'kind', ARGV[2], 'machineId', ARGV[10], 'state', 'failed',
    'createdMs', now, 'finishedMs', now, 'result', ARGV[11])
  redis.call('PEXPIRE', KEYS[3], ARGV[7])
  redis.call('HINCRBY', KEYS[7], 'failed', 1)
  return {'offline', ARGV[1]}
end
local claim_by = now + tonumber(ARGV[5])
local deadline = now + tonumber(ARGV[6])
redis.call('HSET', KEYS[3], 'kind', ARGV[2], 'machineId', ARGV[10], 'args', ARGV[3],
  'state', 'queued', 'replyTo', ARGV[12], 'createdMs', now, 'claimBy', claim_by,
  'deadlineMs', deadline)
redis.call('PEXPIRE', KEYS[3], ARGV[7])
redis.call('LPUSH', KEYS[2], ARGV[4])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[6]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
end
if ARGV[8] ~= '' then
  redis.call('SET', KEYS[4], ARGV[1] .. ' ' .. ARGV[8], 'PX', ARGV[9])
end
return {'queued', ARGV[1], now, claim_by, deadline}
"""
)

# KEYS: job, waiters. ARGV: reply inbox, retention ms.
ATTACH = (
    NOW
    + """
local f = redis.call('HMGET', KEYS[1], 'state', 'result', 'claimBy', 'deadlineMs')
if not f[1] then return {'missing'} end
if f[1] == 'queued' or f[1] == 'running' then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return {f[1], f[2] or '', now, f[3] or '0', f[4] or '0'}
"""
)

# KEYS: job, running set, stats. ARGV: agent instance id, job id.
CLAIM = (
    NOW
    + """
local f = redis.call('HMGET', KEYS[1], 'state', 'claimBy')
if not f[1] then return {'missing'} end
if f[1] ~= 'queued' then return {'taken', f[1]} end
if now > tonumber(f[2]) then
  redis.call('HSET', KEYS[1], 'state', 'expired', 'finishedMs', now)
  redis.call('HINCRBY', KEYS[3], 'expired', 1)
  return {'late'}
end
redis.call('HSET', KEYS[1], 'state', 'running', 'claimedBy', ARGV[1], 'claimedMs', now)
redis.call('SADD', KEYS[2], ARGV[2])
return {'claimed'}
"""
)

# KEYS: job, waiters, running set, stats. ARGV: agent instance id, final state, result, job id.
# Fenced by the instance id: an agent that was paused or replaced cannot overwrite the job.
COMPLETE = (
    NOW
    + """
local f = redis.call('HMGET', KEYS[1], 'state', 'claimedBy', 'replyTo')
if not f[1] then return {'missing'} end
if f[2] ~= ARGV[1] or (f[1] ~= 'running' and f[1] ~= 'unknown') then return {'stale', f[1]} end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'result', ARGV[3], 'finishedMs', now)
redis.call('SREM', KEYS[3], ARGV[4])
redis.call('HINCRBY', KEYS[4], ARGV[2], 1)
local out = {'done', f[3]}
for _, w in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do table.insert(out, w) end
redis.call('DEL', KEYS[2])
return out
"""
)

# KEYS: job, stats. ARGV: agent instance id, final state, result.
# A read-only job (a path check) runs without a claim and is settled in one step: it counts only
# while the hub still waits (state queued); a late result changes nothing, as nothing was changed.
FINISH = (
    NOW
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'queued' then return {'refused', state or 'missing'} end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'result', ARGV[3], 'claimedBy', ARGV[1],
  'claimedMs', now, 'finishedMs', now)
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
return {'done'}
"""
)

# KEYS: job, waiters, heartbeat, running set, stats.
# ARGV: previous instance, this instance, final state, result, job id.
# The one way a restarted agent may finish a job its previous incarnation claimed: only when
# that instance claimed it and no longer holds the machine's heartbeat.
RECOVER = (
    NOW
    + """
local f = redis.call('HMGET', KEYS[1], 'state', 'claimedBy', 'replyTo')
if not f[1] then return {'missing'} end
if f[2] ~= ARGV[1] or (f[1] ~= 'running' and f[1] ~= 'unknown') then return {'stale', f[1]} end
if redis.call('HGET', KEYS[3], 'instance') == ARGV[1] then return {'alive'} end
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'result', ARGV[4], 'finishedMs', now, 'recoveredBy', ARGV[2])
redis.call('SREM', KEYS[4], ARGV[5])
redis.call('HINCRBY', KEYS[5], ARGV[3], 1)
local out = {'done', f[3]}
for _, w in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do table.insert(out, w) end
redis.call('DEL', KEYS[2])
return out
"""
)

# KEYS: job, running set, stats.
# ARGV: 'expire' (queued -> expired) or 'give_up' (also running -> unknown), job id.
ABANDON = (
    NOW
    + """
local f = redis.call('HMGET', KEYS[1], 'state', 'result')
if not f[1] then return {'missing'} end
if f[1] == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'expired', 'finishedMs', now)
  redis.call('HINCRBY', KEYS[3], 'expired', 1)
  return {'expired', ''}
end
if f[1] == 'running' and ARGV[1] == 'give_up' then
  redis.call('HSET', KEYS[1], 'state', 'unknown')
  redis.call('SREM', KEYS[2], ARGV[2])
  redis.call('HINCRBY', KEYS[3], 'unknown', 1)
  return {'unknown', ''}
end
return {f[1], f[2] or ''}
"""
)

# KEYS: heartbeat, info. ARGV: agent instance id, metadata json, ttl ms.
# Returns whether the registration record still exists, so an agent notices Redis lost it.
HEARTBEAT = (
    NOW
    + """
redis.call('HSET', KEYS[1], 'instance', ARGV[1], 'seenMs', now, 'metadata', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
-- Kept on the registration record, so an offline machine still shows when it was last seen.
redis.call('HSET', KEYS[2], 'lastSeenMs', now)
return 1
"""
)

# KEYS: heartbeat. ARGV: agent instance id. A stopping agent removes only its own heartbeat.
RELEASE = """
if redis.call('HGET', KEYS[1], 'instance') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: info. ARGV: online | offline. Returns 1 when the state changed (then tell the watchers).
SET_STATE = (
    NOW
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'state') == ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'stateSinceMs', now)
return 1
"""
)

# The background worker's sweeps (core.sweeps). Each acts only on what it saw, so running a sweep
# twice, or on two workers at once, changes nothing the second time.

# KEYS: info, heartbeat. ARGV: online | offline.
# SET_STATE, but only while the heartbeat agrees: a machine that came back between the sweep's
# read and this script is not marked offline (nor a vanished one online). Returns 1 on a change.
SWEEP_STATE = (
    NOW
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local beating = redis.call('EXISTS', KEYS[2]) == 1
if beating ~= (ARGV[1] == 'online') then return 0 end
if redis.call('HGET', KEYS[1], 'state') == ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'stateSinceMs', now)
return 1
"""
)

# KEYS: mailbox, heartbeat. Takes every envelope off an offline machine's mailbox (oldest last),
# none while the machine has a heartbeat.
DRAIN = """
if redis.call('EXISTS', KEYS[2]) == 1 then return {} end
local items = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
return items
"""

# KEYS: job, waiters, stats, heartbeat. ARGV: result for claimed kinds, result for read-only kinds.
# Fails a job still queued on a machine without a heartbeat; returns its kind and reply addresses.
FAIL_QUEUED = (
    NOW
    + """
if redis.call('EXISTS', KEYS[4]) == 1 then return {'alive'} end
local f = redis.call('HMGET', KEYS[1], 'state', 'kind', 'replyTo')
if f[1] ~= 'queued' then return {'skip', f[1] or 'missing'} end
local result = ARGV[2]
if f[2] == 'spawn' or f[2] == 'stop' then result = ARGV[1] end
redis.call('HSET', KEYS[1], 'state', 'failed', 'result', result, 'finishedMs', now)
redis.call('HINCRBY', KEYS[3], 'failed', 1)
local out = {'done', f[2] or '', result, f[3] or ''}
for _, w in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do table.insert(out, w) end
redis.call('DEL', KEYS[2])
return out
"""
)

# KEYS: job, running set, stats, heartbeat. ARGV: job id, the instance the sweep saw claim it.
# running -> unknown when the claiming instance no longer holds the heartbeat; a running-set entry
# whose job is no longer running (or gone) is dropped.
LOSE_RUNNING = """
local f = redis.call('HMGET', KEYS[1], 'state', 'claimedBy', 'kind')
if f[1] ~= 'running' then
  redis.call('SREM', KEYS[2], ARGV[1])
  return {'skip', f[1] or 'missing'}
end
if f[2] ~= ARGV[2] then return {'skip', 'reclaimed'} end
if redis.call('HGET', KEYS[4], 'instance') == f[2] then return {'alive'} end
redis.call('HSET', KEYS[1], 'state', 'unknown')
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[3], 'unknown', 1)
return {'unknown', f[3] or ''}
"""
