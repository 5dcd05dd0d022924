-- freezes.lua: give a user streak freezes bought in the catalog, once per
-- redemption, on ONE (tenant, shard).
--
-- KEYS[1]  maintenance flag  string; while it exists nothing is applied
-- KEYS[2]  balances          hash (the row's balance after is the user's available)
-- KEYS[3]  outbox            stream of ledger entries
-- KEYS[4]  counters          hash of the ever period: "<user>\31<counter>" -> freezes held
-- KEYS[5]  dedup record      string: the freezes this redemption gave
--
-- ARGV[1]  user id
-- ARGV[2]  counter name
-- ARGV[3]  freezes asked (> 0)
-- ARGV[4]  the most a user may hold (checked by the redemption, not here)
-- ARGV[5]  dedup TTL (s)
-- ARGV[6]  outbox entry data of the bonus row (opaque here)
-- ARGV[7]  the row's "<tag>\31<reason>"
--
-- Returns {code, given}: code 1 applied, 2 duplicate (given as the first
-- time), 8 maintenance (nothing applied). A zero-point once-bonus row names
-- the freezes given (field z), which is what a rebuild counts.

local APPLIED, DUPLICATE, MAINTENANCE = 1, 2, 8

if redis.call('EXISTS', KEYS[1]) == 1 then return {MAINTENANCE, 0} end
local prev = redis.call('GET', KEYS[5])
if prev then return {DUPLICATE, tonumber(prev)} end
local field = ARGV[1] .. '\31' .. ARGV[2]
local held = tonumber(redis.call('HGET', KEYS[4], field) or '0')
-- Bought freezes are all given: the redemption checked the most held (what
-- is held and what other redemptions have pending) with the item locked;
-- only a milestone's freeze granted at the same moment can go past it.
local given = tonumber(ARGV[3])
if given > 0 then redis.call('HSET', KEYS[4], field, held + given) end
local balance = tonumber(redis.call('HGET', KEYS[2], ARGV[1] .. '|a') or '0')
redis.call('XADD', KEYS[3], '*', 'p', 0, 'b', balance, 'd', ARGV[6], 'm', ARGV[7], 'o', '1',
  'z', given)
redis.call('SET', KEYS[5], given, 'EX', tonumber(ARGV[5]))
return {APPLIED, given}
