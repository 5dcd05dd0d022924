-- around.lua: where a (score, member) pair sits in ONE shard's board, and
-- who is next to it there. Read-only.
--
-- KEYS[1]  board sorted set: member -> -score (ascending = best first, ties by member)
-- ARGV[1]  stored score of the member (negated points)
-- ARGV[2]  member id
-- ARGV[3]  neighbours wanted on each side
--
-- Returns {better, position, size, above, below}:
--   better    members of this shard with a strictly better score
--   position  members of this shard sorted before (score, member):
--             better + ties whose member id sorts before it (byte order)
--   size      members of this shard
--   above     up to n entries just before the position, flat {member, score, ...}
--   below     up to n entries just after it (the member itself excluded)

local key, score, member, n = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])

-- Byte order, as sorted sets order equal scores; Lua's own string comparison
-- follows the server's locale.
local function before(a, b)
  local la, lb = #a, #b
  for i = 1, math.min(la, lb) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return la < lb
end

local better = redis.call('ZCOUNT', key, '-inf', '(' .. score)
local ties = redis.call('ZCOUNT', key, score, score)
local lo, hi = 0, ties
while lo < hi do
  local mid = math.floor((lo + hi) / 2)
  local at = redis.call('ZRANGE', key, better + mid, better + mid)[1]
  if before(at, member) then lo = mid + 1 else hi = mid end
end
local position = better + lo
local size = redis.call('ZCARD', key)
local above = {}
if n > 0 and position > 0 then
  above = redis.call('ZRANGE', key, math.max(0, position - n), position - 1, 'WITHSCORES')
end
local start = position
if redis.call('ZRANGE', key, position, position)[1] == member then start = position + 1 end
local below = {}
if n > 0 then
  below = redis.call('ZRANGE', key, start, start + n - 1, 'WITHSCORES')
end
return {better, position, size, above, below}
