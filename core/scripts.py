"""The Lua scripts behind every job and machine transition (docs/design.md, "Jobs").

A recorded job (spawn, stop) is one JSON string under its machine's keys; `args` and `result`
inside it are JSON texts kept as strings, so no script ever re-encodes what a caller sent.

    from      to                   by
    (none)    queued               ENQUEUE (hub; the machine has a heartbeat)
    (none)    failed               ENQUEUE (hub; no heartbeat: nothing is queued)
    (none)    queued, waiting      ENQUEUE (hub; no heartbeat, a spawn with waitForMachineS)
    queued    running              CLAIM (agent, before claimBy)
    queued    expired              CLAIM (agent, after claimBy) or ABANDON (hub or, waiting, worker)
    queued    failed               ORPHAN (sweep: the machine has no heartbeat; never a waiting job)
    running   succeeded | failed   COMPLETE (agent, the instance that claimed it)
    running   unknown              ABANDON give_up (hub or worker, at its deadline) or ORPHAN (claimer gone)
    unknown   succeeded | failed   COMPLETE (the claimer, late) or RECOVER (its successor's journal)

ORPHAN, the scripts of a machine's registration (SET_REG, UNREGISTER: written by trusted processes
only) and those of the sweeps and webhooks are in core/machine_scripts.py.

Claim and abandon both act only on `queued`, so exactly one of them wins: a job the hub
abandoned never runs, and a job an agent claimed is never reported as not started. A waiting
job (`waitMs` in its record) is a queued spawn whose claim deadline is the end of its wait: its
machine takes it when it comes online, and its run deadline starts at the claim. Read-only
jobs (path checks, session lists) have no record: their envelope is pushed by PUSH_READ and the
answer goes straight to the asking hub. Every script reads the clock with Redis TIME (COMPLETE
adds the claimer's own measure of the run to the claim's time); none is ever retried after an error
other than NOSCRIPT, which means it did not run (core.lua), except COMPLETE: the same report from
the same instance again changes nothing and gets the first one's answer.
"""

from __future__ import annotations

NOW = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# Reads the job record, or returns {'missing'} from the script.
RECORD = """
local raw = redis.call('GET', job)
if not raw then return {'missing'} end
local rec = cjson.decode(raw)
local function save() redis.call('SET', job, cjson.encode(rec), 'KEEPTTL') end
"""

ENQUEUE = (
    NOW
    + """
local hb, reg, mailbox, job, idem, waiting_set = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local job_id, kind, machine_id, args, envelope = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local claim_ms, timeout_ms, retention_ms = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local fingerprint, idem_ttl_ms, offline_result = ARGV[9], ARGV[10], ARGV[11]
local hub_id, secret, max_queued = ARGV[12], ARGV[13], tonumber(ARGV[14])
local wait_ms = tonumber(ARGV[15] or '0')
if fingerprint ~= '' then
  local existing = redis.call('GET', idem)
  if existing then return {'duplicate', existing} end
end
local registered = redis.call('HMGET', reg, 'addedMs', 'drained')
if not registered[1] then return {'unknown'} end
if registered[2] == '1' and kind == 'spawn' then return {'draining'} end  -- stops still run
local rec = {kind = kind, machineId = machine_id, args = args}
local waiting = false
if redis.call('EXISTS', hb) == 0 then
  local now = now_ms()
  if wait_ms <= 0 or kind ~= 'spawn' then
    rec.state, rec.createdMs, rec.finishedMs, rec.result = 'failed', now, now, offline_result
    redis.call('SET', job, cjson.encode(rec), 'PX', retention_ms)
    return {'offline', now}
  end
  waiting = true
end
local depth = redis.call('LPUSH', mailbox, envelope)
if depth > max_queued then
  redis.call('LPOP', mailbox)
  return {'full', depth - 1}
end
local now = now_ms()
rec.state, rec.replyTo, rec.secret, rec.createdMs = 'queued', hub_id, secret, now
rec.claimBy, rec.deadlineMs = now + claim_ms, now + timeout_ms
if waiting then
  -- The wait is the claim deadline; the run gets the usual deadline from its claim (CLAIM).
  rec.waitMs, rec.runMs = wait_ms, timeout_ms
  rec.claimBy, rec.deadlineMs = now + wait_ms, now + wait_ms + timeout_ms
  retention_ms = tonumber(retention_ms) + wait_ms
  redis.call('SADD', waiting_set, job_id)  -- the worker looks at them when the machine comes online
end
redis.call('SET', job, cjson.encode(rec), 'PX', retention_ms)
if fingerprint ~= '' then
  redis.call('SET', idem, job_id .. ' ' .. fingerprint, 'PX', idem_ttl_ms)
end
if waiting then return {'waiting', now, rec.claimBy, rec.deadlineMs} end
return {'queued', now, rec.claimBy, rec.deadlineMs}
"""
)

# A read-only job: pushed only while the machine has a heartbeat and room in its mailbox.
PUSH_READ = """
local hb, mailbox = KEYS[1], KEYS[2]
local envelope, max_queued = ARGV[1], tonumber(ARGV[2])
if redis.call('EXISTS', hb) == 0 then return -1 end
local depth = redis.call('LPUSH', mailbox, envelope)
if depth > max_queued then
  redis.call('LPOP', mailbox)
  return -2
end
return depth
"""

# A second caller with the same Idempotency-Key joins a job: its hub is told the outcome too.
ATTACH = (
    NOW
    + """
local job = KEYS[1]
local hub_id = ARGV[1]
"""
    + RECORD
    + """
if rec.state == 'queued' or rec.state == 'running' then
  rec.waiters = ((rec.waiters or '') .. ' ' .. hub_id)
  save()
end
return {rec.state, rec.result or '', now_ms(), rec.claimBy or 0, rec.deadlineMs or 0, rec.secret or '', rec.waitMs or 0}
"""
)

CLAIM = (
    NOW
    + """
local job = KEYS[1]
local instance = ARGV[1]
"""
    + RECORD
    + """
if rec.state ~= 'queued' then return {'taken', rec.state} end
local now = now_ms()
if now > rec.claimBy then
  rec.state, rec.finishedMs = 'expired', now
  save()
  return {'late'}
end
rec.state, rec.claimedBy, rec.claimedMs = 'running', instance, now
if rec.runMs then rec.deadlineMs = now + rec.runMs end  -- a waiting job runs from its claim on
save()
return {'claimed'}
"""
)

# Fenced by the instance id: an agent that was paused or replaced cannot overwrite the job.
# Returns where to answer: the asking hub, the hubs that joined, and the job's secret.
# The job ended at its claim (Redis clock) plus how long the claimer held it (its own monotonic
# clock): no TIME call, and right also when the report lands long after the end (an outage).
COMPLETE = (
    """
local job = KEYS[1]
local instance, state, result, held_ms = ARGV[1], ARGV[2], ARGV[3], math.max(0, tonumber(ARGV[4]) or 0)
"""
    + RECORD
    + """
if rec.claimedBy == instance and rec.state == state and rec.result == result then
  -- The same report again (its first answer was lost): nothing changes, the answer is repeated.
  return {'done', rec.replyTo or '', rec.waiters or '', rec.secret or ''}
end
if rec.claimedBy ~= instance or (rec.state ~= 'running' and rec.state ~= 'unknown') then
  return {'stale', rec.state}
end
rec.state, rec.result, rec.finishedMs = state, result, (rec.claimedMs or rec.createdMs) + math.floor(held_ms)
save()
return {'done', rec.replyTo or '', rec.waiters or '', rec.secret or ''}
"""
)

# The one way a restarted agent may finish a job its previous incarnation claimed: only when
# that instance claimed it and no longer holds the machine's heartbeat.
RECOVER = (
    NOW
    + """
local job, hb = KEYS[1], KEYS[2]
local old_instance, instance, state, result = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
"""
    + RECORD
    + """
if rec.claimedBy ~= old_instance or (rec.state ~= 'running' and rec.state ~= 'unknown') then
  return {'stale', rec.state}
end
local beat = redis.call('GET', hb)
if beat and string.sub(beat, 1, 32) == old_instance then return {'alive'} end
rec.state, rec.result, rec.finishedMs, rec.recoveredBy = state, result, now_ms(), instance
save()
return {'done', rec.replyTo or '', rec.waiters or '', rec.secret or ''}
"""
)

# At a deadline: 'expire' ends a job still queued; 'give_up' also turns a running one unknown.
# The first element says whether this call changed the job, so a second abandon stays silent.
ABANDON = (
    NOW
    + """
local job = KEYS[1]
local mode = ARGV[1]
"""
    + RECORD
    + """
if rec.state == 'queued' then
  rec.state, rec.finishedMs, rec.published = 'expired', now_ms(), true
  save()
  return {'changed', 'expired', ''}
end
if rec.state == 'running' and mode == 'give_up' then
  rec.state, rec.published = 'unknown', true
  save()
  return {'changed', 'unknown', ''}
end
return {'same', rec.state, rec.result or ''}
"""
)

# The worker's look at a waiting job (core.waiting), nobody else's to settle: it expires the job at
# the end of its wait, gives a claimed one up at its run deadline, and announces once (`published`,
# which ABANDON and ORPHAN also set when they publish) an outcome nobody published yet.
WAITING = (
    NOW
    + """
local job, hb = KEYS[1], KEYS[2]
"""
    + RECORD
    + """
local now = now_ms()
if rec.state == 'queued' then
  if now <= rec.claimBy then return {'queued', rec.claimBy, redis.call('EXISTS', hb)} end
  rec.state, rec.finishedMs = 'expired', now
elseif rec.state == 'running' then
  if now <= rec.deadlineMs then return {'running', rec.deadlineMs, 1} end
  rec.state = 'unknown'
elseif rec.published then
  return {'done'}
end
rec.published = true
save()
return {'ended', rec.state, rec.result or '', rec.kind or ''}
"""
)

ALL = {
    name: source
    for name, source in globals().items()
    if name.isupper() and name not in ("NOW", "RECORD") and isinstance(source, str)
}
