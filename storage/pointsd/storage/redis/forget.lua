-- forget.lua: drop the consumer-group members of dead processes from ONE
-- outbox stream, atomically: a member is removed only if, at that instant, it
-- owns no pending entry and has been idle long enough. (Checked and removed in
-- two steps, a member that read entries in between would lose them: they would
-- be neither pending nor delivered again.)
--
-- KEYS[1]  outbox stream
-- ARGV[1]  consumer group     ARGV[2]  this process's consumer (kept)
-- ARGV[3]  minimum idle time (ms)
-- Returns the number of members removed.

if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return 0 end  -- no group yet
local removed = 0
for _, c in ipairs(consumers) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['name'] ~= ARGV[2] and f['pending'] == 0 and f['idle'] > tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    removed = removed + 1
  end
end
return removed
