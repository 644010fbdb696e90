-- flight_append: keep one slice's flight records in the VM's capped stream, unless the VM has
-- been destroyed meanwhile: a record kept just after the slice's commit may come after DestroyVm,
-- and must not bring the stream back (nothing would ever delete it again).
-- KEYS[1] the VM's record  KEYS[2] its flight stream (one hash tag: {vm:ID})
-- ARGV[1] the records (JSON)  ARGV[2] about how many slices to keep
-- Returns 1 when kept, 0 when the VM is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'records', ARGV[1])
return 1
