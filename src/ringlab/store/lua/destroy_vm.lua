-- destroy_vm: forget a VM and everything it owns; a running holder's commit is then refused.
-- KEYS[1] rl:vm:names  KEYS[2] rl:sched:vms  KEYS[3] rl:sched:meta  KEYS[4] rl:events
-- KEYS[5..] the VM's own keys (ringlab.store.keys.vm_keys)
-- ARGV[1] vm id  ARGV[2] name  ARGV[3] now
-- Returns 1 when destroyed, 0 when there was no such VM.
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('HGET', KEYS[1], ARGV[2]) == ARGV[1] then
  redis.call('HDEL', KEYS[1], ARGV[2])
end
for i = 5, #KEYS do
  redis.call('DEL', KEYS[i])
end
redis.call('HINCRBY', KEYS[3], 'version', 1)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', 100000, '*', 'kind', 'destroyed', 'vm', ARGV[1],
  'pcpu', '', 'detail', ARGV[2], 'time', ARGV[3])
return 1
