-- commit: a vCPU's state at an exit boundary, fenced by the grant's token.
-- KEYS[1] rl:sched:vms  KEYS[2] rl:sched:meta  KEYS[3] vcpu  KEYS[4] pages  KEYS[5] console
-- KEYS[6] record  KEYS[7] rl:events  KEYS[8] rl:commits (the commit log, for `ringlab chaos`)
-- ARGV[1] vm id  ARGV[2] fencing token  ARGV[3] base generation (what the committer loaded)
-- ARGV[4] CpuState JSON (registers, timer phase, pending events)  ARGV[5] Stats JSON
-- ARGV[6] hypervisor per-VM state JSON  ARGV[7] console bytes produced since the last commit
-- ARGV[8] terminal status or ''  ARGV[9] exit code or ''  ARGV[10] detail  ARGV[11] now
-- ARGV[12] '1': check the token (always, but for the RINGLAB_UNSAFE_NO_FENCING=1 exercise)
-- ARGV[13..] page number, page bytes, ... (the dirty pages)
-- Returns {1, generation, 0} when applied; {1, generation, 1} when this exact commit was already
-- applied (a client retry); {0, why} when refused (stale token, stale generation, VM gone).  The
-- reason names only what the committer sent, never the current grant's token (a secret: a
-- caller who learnt it could commit as the grant's holder) nor the current generation.
-- The console stream never holds more than the record's console_quota bytes (create_vm.lua):
-- bytes past it are dropped here (the hypervisor stops a VM at its quota; this bounds the stream
-- whoever commits).  The vcpu hash counts the stream's bytes in console_bytes.
-- Every applied or refused commit is also appended to the capped commit log: the committer's
-- token, the grant current at that moment, the generations and the retired count.
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
local decoded, stats = pcall(cjson.decode, ARGV[5])
local retired = decoded and type(stats) == 'table' and tonumber(stats.retired) or -1
local function log(outcome, landed, why)
  redis.call('XADD', KEYS[8], 'MAXLEN', '~', 100000, '*', 'vm', ARGV[1], 'token', ARGV[2],
    'current', tostring(entry.token or 0), 'status', tostring(entry.status), 'pcpu',
    tostring(entry.pcpu or ''), 'boot', tostring(entry.boot or 0), 'base', ARGV[3],
    'generation', landed, 'retired', retired, 'end', ARGV[8], 'outcome', outcome, 'why', why,
    'fenced', ARGV[12], 'time', ARGV[11])
end
if ARGV[12] == '1' and (tonumber(entry.token) ~= token or entry.status ~= 'running') then
  local why = 'stale lease: token ' .. ARGV[2] .. ' is not the current grant of this VM (VM ' ..
    tostring(entry.status) .. ')'
  log('refused', generation, why)
  return {0, why}
end
if generation ~= base then
  local why = 'stale generation: the committer loaded commit ' .. ARGV[3] .. ', not the latest'
  log('refused', generation, why)
  return {0, why}
end
generation = generation + 1
log('applied', generation, '')
redis.call('HSET', KEYS[3], 'state', ARGV[4], 'stats', ARGV[5], 'vmm', ARGV[6],
  'generation', generation, 'token', token)
for i = 13, #ARGV, 2 do
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
end
local console = ARGV[7]
local quota = tonumber(redis.call('HGET', KEYS[6], 'console_quota') or '')
if quota and #console > 0 then
  local room = quota - tonumber(redis.call('HGET', KEYS[3], 'console_bytes') or '0')
  if room < #console then
    console = string.sub(console, 1, math.max(room, 0))
  end
end
if #console > 0 then
  redis.call('XADD', KEYS[5], '*', 'data', console)
  redis.call('HINCRBY', KEYS[3], 'console_bytes', #console)
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
