-- control: an operator's lifecycle action on one VM (start, pause, resume, stop).
-- Pause and stop revoke the current grant (token 0): the holder's next commit is refused, and
-- the VM later resumes from its last commit (runs are deterministic, so nothing is lost).
-- KEYS[1] rl:sched:vms  KEYS[2] rl:sched:meta  KEYS[3] record  KEYS[4] rl:events
-- ARGV[1] vm id  ARGV[2] action  ARGV[3] now
-- Returns {1, status} when done (or already so), {0, why} when the action does not apply.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  return {0, 'no such VM'}
end
local entry = cjson.decode(raw)
local status = entry.status
local live = {runnable = true, running = true, blocked = true}
local action = ARGV[2]
local new
if action == 'start' then
  -- An ended VM boots afresh through reboot_vm.lua instead; a paused one must be resumed.
  if status == 'paused' then
    return {0, 'the VM is paused: resume it with ResumeVm (ringlab vm resume)'}
  end
  if status == 'created' then new = 'runnable' else return {1, status} end
elseif action == 'pause' then
  if status == 'paused' then return {1, status} end
  if not live[status] then return {0, 'the VM is ' .. status .. ': only a started VM can be paused'} end
  new = 'paused'
elseif action == 'resume' then
  if live[status] then return {1, status} end
  if status ~= 'paused' then return {0, 'the VM is ' .. status .. ': only a paused VM can be resumed'} end
  new = 'runnable'
elseif action == 'stop' then
  if status == 'created' or status == 'paused' or live[status] then new = 'stopped' else return {1, status} end
  redis.call('HSET', KEYS[3], 'status', 'stopped', 'code', '', 'detail', 'stopped by the operator')
else
  return {0, 'unknown action ' .. action}
end
entry.status = new
entry.token = 0
entry.pcpu = ''
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(entry))
redis.call('HINCRBY', KEYS[2], 'version', 1)
local kinds = {start = 'started', pause = 'paused', resume = 'resumed', stop = 'stopped'}
redis.call('XADD', KEYS[4], 'MAXLEN', '~', 100000, '*', 'kind', kinds[action], 'vm', ARGV[1],
  'pcpu', '', 'detail', '', 'time', ARGV[3])
return {1, new}
