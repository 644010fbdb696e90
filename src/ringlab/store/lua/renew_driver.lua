-- renew_driver: take or keep the right to drive one pCPU (one hypervisor replica per pCPU).
-- KEYS[1] rl:pcpu:ID:driver
-- ARGV[1] owner (this replica's id)  ARGV[2] time to live in milliseconds
-- Returns 1 when the caller holds the pCPU now, 0 when another live replica does.
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
