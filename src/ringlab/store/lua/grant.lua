-- grant: apply one scheduling decision (made in Python by ringlab.sched.credit) atomically.
-- The decision was computed from the snapshot at `version`; if anything changed since, nothing
-- is applied and the fresh snapshot comes back so the caller can decide again.
-- KEYS[1] rl:sched:vms  KEYS[2] rl:sched:meta  KEYS[3] rl:fence  KEYS[4] rl:events
-- KEYS[5] rl:pcpu:ID:stats
-- ARGV[1] expected version  ARGV[2] pcpu id  ARGV[3] now  ARGV[4] lease seconds
-- ARGV[5] VM to grant the pCPU to, or ''  ARGV[6] busy seconds  ARGV[7] scheduler seconds
-- ARGV[8] slices  ARGV[9] world switches  ARGV[10] Redis round trips (pCPU statistics increments)
-- ARGV[11] n = number of updated entries; ARGV[12 .. 11+2n] id, entry JSON, ...
-- ARGV[12+2n ..] events, each a JSON object {kind, vm, detail} (time and pcpu are added)
-- Returns {1, token, version, snapshot} when applied (token 0 when no VM was chosen) or
-- {0, 0, version, snapshot} on a conflict; snapshot is HGETALL rl:sched:vms.
local version = tonumber(redis.call('HGET', KEYS[2], 'version') or '0')
if version ~= tonumber(ARGV[1]) then
  return {0, 0, version, redis.call('HGETALL', KEYS[1])}
end
local n = tonumber(ARGV[11])
for i = 12, 11 + 2 * n, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
local token = 0
local chosen = ARGV[5]
if chosen ~= '' then
  local raw = redis.call('HGET', KEYS[1], chosen)
  if raw then
    local entry = cjson.decode(raw)
    token = redis.call('INCR', KEYS[3])
    entry.status = 'running'
    entry.token = token
    entry.pcpu = ARGV[2]
    entry.lease_until = tonumber(ARGV[3]) + tonumber(ARGV[4])
    redis.call('HSET', KEYS[1], chosen, cjson.encode(entry))
  end
end
for i = 12 + 2 * n, #ARGV do
  local e = cjson.decode(ARGV[i])
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', 100000, '*', 'kind', e.kind, 'vm', e.vm,
    'pcpu', ARGV[2], 'detail', e.detail, 'time', ARGV[3])
end
redis.call('HINCRBYFLOAT', KEYS[5], 'busy_seconds', ARGV[6])
redis.call('HINCRBYFLOAT', KEYS[5], 'scheduler_seconds', ARGV[7])
redis.call('HINCRBY', KEYS[5], 'slices', ARGV[8])
redis.call('HINCRBY', KEYS[5], 'world_switches', ARGV[9])
redis.call('HINCRBY', KEYS[5], 'redis_round_trips', ARGV[10])
version = redis.call('HINCRBY', KEYS[2], 'version', 1)
return {1, token, version, redis.call('HGETALL', KEYS[1])}
