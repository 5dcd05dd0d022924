-- ack.lua: acknowledge and delete flushed outbox entries of ONE (tenant, shard)
-- atomically, parking some of them in the dead-letter stream first.
--
-- One script, so no crash, dropped connection or truncated AOF can leave an
-- entry acknowledged but not deleted: such an entry would be pending for no
-- consumer and never delivered again, yet keep the stream from draining.
--
-- KEYS[1]  outbox stream
-- KEYS[2]  dead-letter stream (same hash tag)
-- ARGV[1]  consumer group
-- ARGV[2]  n, the number of entry ids that follow
-- ARGV[3 .. 2+n]  entry ids to acknowledge and delete (parked ones included)
-- then, per entry to park: k, the number of field/value pairs, and the 2k
-- strings, copied into the dead-letter stream.
--
-- Parking comes first: if Redis refuses an XADD (out of memory), the script
-- stops before any XACK/XDEL and the entries are delivered again later.
-- Returns n.

local group = ARGV[1]
local n = tonumber(ARGV[2])
local i = 3 + n
while i <= #ARGV do
  local k = tonumber(ARGV[i])
  redis.call('XADD', KEYS[2], '*', unpack(ARGV, i + 1, i + 2 * k))
  i = i + 1 + 2 * k
end
-- Chunks keep unpack() far below Lua's stack limit.
for s = 3, 2 + n, 1000 do
  local e = math.min(s + 999, 2 + n)
  redis.call('XACK', KEYS[1], group, unpack(ARGV, s, e))
  redis.call('XDEL', KEYS[1], unpack(ARGV, s, e))
end
return n
