-- reboot_vm: boot a VM that has ended (stopped, poweroff, halted, shutdown, limit) afresh from
-- its image, as `virsh start` does after a shutdown: registers, memory, console, statistics and
-- the scheduler's accounting start over, and the VM joins the run queue.
-- The generation moves on (never back), so a pCPU's cached copy of the old run is never reused;
-- the entry's `boot` number tells the hypervisor's drivers to drop their copy of the old run.
-- KEYS[1] rl:sched:vms  KEYS[2] rl:sched:meta  KEYS[3] record  KEYS[4] vcpu  KEYS[5] pages
-- KEYS[6] console  KEYS[7] rl:events
-- ARGV[1] vm id  ARGV[2] CpuState JSON  ARGV[3] Stats JSON  ARGV[4] scheduler entry JSON (fresh,
-- status runnable; its `boot` is set here)  ARGV[5] now  ARGV[6] the console so far (empty but for
-- a VM restored from a snapshot, which boots from it again)  ARGV[7..] page number, page bytes, ...
-- Returns {1, boot number} when rebooted, {0, status} when the VM has not ended (nothing done),
-- {0, ''} when there is no such VM.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  return {0, ''}
end
local old = cjson.decode(raw)
local ended = {stopped = true, poweroff = true, halted = true, shutdown = true, limit = true}
if not ended[old.status] then
  return {0, old.status}
end
local boot = (tonumber(old.boot) or 0) + 1
local generation = tonumber(redis.call('HGET', KEYS[4], 'generation') or '0') + 1
redis.call('HSET', KEYS[4], 'state', ARGV[2], 'stats', ARGV[3], 'vmm', '{}', 'generation', generation,
  'token', 0, 'console_bytes', #ARGV[6])
redis.call('DEL', KEYS[5], KEYS[6])
if #ARGV[6] > 0 then
  redis.call('XADD', KEYS[6], '*', 'data', ARGV[6])
end
for i = 7, #ARGV, 2 do
  redis.call('HSET', KEYS[5], ARGV[i], ARGV[i + 1])
end
redis.call('HSET', KEYS[3], 'status', 'created', 'code', '', 'detail', '')
local entry = cjson.decode(ARGV[4])
entry.boot = boot
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(entry))
redis.call('HINCRBY', KEYS[2], 'version', 1)
redis.call('XADD', KEYS[7], 'MAXLEN', '~', 100000, '*', 'kind', 'started', 'vm', ARGV[1],
  'pcpu', '', 'detail', 'rebooted (boot ' .. boot .. ')', 'time', ARGV[5])
return {1, boot}
