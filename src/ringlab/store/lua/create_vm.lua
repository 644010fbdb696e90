-- create_vm: define a VM, idempotently by name.
-- KEYS[1] rl:vm:names  KEYS[2] record  KEYS[3] image  KEYS[4] vcpu  KEYS[5] pages
-- KEYS[6] rl:sched:vms  KEYS[7] rl:sched:meta  KEYS[8] rl:events  KEYS[9] console
-- ARGV[1] name  ARGV[2] id (allocated by the caller with INCR rl:vm:seq)  ARGV[3] definition JSON
-- (its console_quota, when set, is copied to the record's console_quota field)
-- ARGV[4] image bytes  ARGV[5] CpuState JSON  ARGV[6] Stats JSON  ARGV[7] scheduler entry JSON
-- ARGV[8] now (unix seconds)  ARGV[9] the console so far (empty but for a VM restored from a
-- snapshot)  ARGV[10..] page number, page bytes, ... (the booted memory)
-- Returns {1, id} when created, {0, existing id} when the name was already taken.
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing then
  return {0, existing}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], 'def', ARGV[3], 'status', 'created', 'code', '', 'detail', '')
-- The console quota (bytes), which commit.lua enforces on the console stream.
local ok, definition = pcall(cjson.decode, ARGV[3])
if ok and type(definition) == 'table' and tonumber(definition.console_quota) then
  redis.call('HSET', KEYS[2], 'console_quota', tonumber(definition.console_quota))
end
redis.call('SET', KEYS[3], ARGV[4])
redis.call('HSET', KEYS[4], 'state', ARGV[5], 'stats', ARGV[6], 'vmm', '{}', 'generation', 0, 'token', 0,
  'console_bytes', #ARGV[9])
if #ARGV[9] > 0 then
  redis.call('XADD', KEYS[9], '*', 'data', ARGV[9])
end
for i = 10, #ARGV, 2 do
  redis.call('HSET', KEYS[5], ARGV[i], ARGV[i + 1])
end
redis.call('HSET', KEYS[6], ARGV[2], ARGV[7])
redis.call('HINCRBY', KEYS[7], 'version', 1)
redis.call('XADD', KEYS[8], 'MAXLEN', '~', 100000, '*', 'kind', 'created', 'vm', ARGV[2],
  'pcpu', '', 'detail', ARGV[1], 'time', ARGV[8])
return {1, ARGV[2]}
