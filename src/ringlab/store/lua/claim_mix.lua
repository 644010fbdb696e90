-- claim_mix: give a guest replica its entry of the mix list, the same one again if it restarts.
-- KEYS[1] rl:guest:mix:NAME (hash: field 'next' = next free index, one field per replica)
-- ARGV[1] the replica's identity (its hostname)
-- Returns the replica's index (0, 1, 2, ... in order of first arrival).
local mine = redis.call('HGET', KEYS[1], 'replica:' .. ARGV[1])
if mine then
  return tonumber(mine)
end
local index = redis.call('HINCRBY', KEYS[1], 'next', 1) - 1
redis.call('HSET', KEYS[1], 'replica:' .. ARGV[1], index)
return index
