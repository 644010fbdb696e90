-- commit: a vCPU's state at an exit boundary, fenced by the grant's token.
-- KEYS[1] rl:sched:vms  KEYS[2] rl:sched:meta  KEYS[3] vcpu  KEYS[4] pages  KEYS[5] console
-- KEYS[6] record  KEYS[7] rl:events
-- ARGV[1] vm id  ARGV[2] fencing token  ARGV[3] base generation (what the committer loaded)
-- ARGV[4] CpuState JSON (registers, timer phase, pending events)  ARGV[5] Stats JSON
-- ARGV[6] hypervisor per-VM state JSON  ARGV[7] console bytes produced since the last commit
-- ARGV[8] terminal status or ''  ARGV[9] exit code or ''  ARGV[10] detail  ARGV[11] now
-- ARGV[12..] page number, page bytes, ... (the dirty pages)
-- Returns {1, generation, 0} when applied; {1, generation, 1} when this exact commit was already
-- applied (a client retry); {0, why} when refused (stale token, stale generation, VM gone).
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  return {0, 'the VM no longer exists'}
end
local entry = cjson.decode(raw)
local token = tonumber(ARGV[2])
local base = tonumber(ARGV[3])
local generation = tonumber(redis.call('HGET', KEYS[3], 'generation') or '0')
local last_token = tonumber(redis.call('HGET', KEYS[3], 'token') or '0')
if generation == base + 1 and last_token == token then
  return {1, generation, 1}
end
if tonumber(entry.token) ~= token or entry.status ~= 'running' then
  return {0, 'stale lease: token ' .. ARGV[2] .. ' is not the current grant (current ' ..
    tostring(entry.token) .. ', VM ' .. entry.status .. ')'}
end
if generation ~= base then
  return {0, 'stale generation: committed ' .. generation .. ', committer loaded ' .. ARGV[3]}
end
generation = generation + 1
redis.call('HSET', KEYS[3], 'state', ARGV[4], 'stats', ARGV[5], 'vmm', ARGV[6],
  'generation', generation, 'token', token)
for i = 12, #ARGV, 2 do
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
end
if #ARGV[7] > 0 then
  redis.call('XADD', KEYS[5], '*', 'data', ARGV[7])
end
if ARGV[8] ~= '' then
  redis.call('HSET', KEYS[6], 'status', ARGV[8], 'code', ARGV[9], 'detail', ARGV[10])
  entry.status = ARGV[8]
  entry.token = 0
  entry.pcpu = ''
  redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(entry))
  redis.call('HINCRBY', KEYS[2], 'version', 1)
  redis.call('XADD', KEYS[7], 'MAXLEN', '~', 100000, '*', 'kind', 'ended', 'vm', ARGV[1],
    'pcpu', '', 'detail', ARGV[8] .. ' ' .. ARGV[9] .. ' ' .. ARGV[10], 'time', ARGV[11])
end
return {1, generation, 0}
