-- hold.lua: a farming flag's hold on ONE user, on ONE (tenant, shard): put
-- the user on hold, or settle the hold (release or void its held points).
-- Flags live in PostgreSQL (farming_flags); this script keeps the hot copy
-- award.lua reads, and moves the points atomically with the ledger rows.
--
-- KEYS[1]  maintenance flag  string; while it exists nothing is applied
-- KEYS[2]  balances          hash "<user>|a" available, "<user>|e" earned, "<user>|h" held
-- KEYS[3]  outbox            stream of ledger entries (fields p, b, d, h, s)
-- KEYS[4]  holds             hash user -> flag id the user's awards are held under,
--                            "<user>\31<flag id>" -> points held under that flag
-- KEYS[5]  settlement record string: the points this flag's settlement moved
--
-- ARGV[1]  "hold", "release" or "void"
-- ARGV[2]  user id
-- ARGV[3]  flag id
-- ARGV[4]  settlement record TTL (s)
-- ARGV[5]  outbox entry data of the held-side row (release, void; opaque here)
-- ARGV[6]  outbox entry data of the paid-side row (release)
--
-- hold: returns {APPLIED, flag id held under} (the flag already holding the
--   user if another one does), or {DUPLICATE, ...} when this flag was settled
--   before (a settled flag never holds again).
-- release / void: returns {APPLIED, points moved} the first time, then
--   {DUPLICATE, points moved the first time}. Release moves the user's held
--   points to available and earned; void cancels them; each writes its rows
--   (held side: -points, state held; release's paid side: +points, state
--   paid). It moves what was held under this flag, and stops the flag
--   holding the user; a flag that never held the user moves 0.
-- MAINTENANCE: a rebuild owns the shard, nothing applied.

-- Result codes: service/pointsd/service/domain StoreCode.
local APPLIED, DUPLICATE, MAINTENANCE = 1, 2, 8

if redis.call('EXISTS', KEYS[1]) == 1 then return {MAINTENANCE, 0} end
local mode, user, flag = ARGV[1], ARGV[2], ARGV[3]
local prev = redis.call('GET', KEYS[5])
if prev then return {DUPLICATE, tonumber(prev)} end

if mode == 'hold' then
  redis.call('HSETNX', KEYS[4], user, flag)
  return {APPLIED, tonumber(redis.call('HGET', KEYS[4], user))}
end

-- Exactly what was held under this flag (award.lua counts it per flag):
-- another flag's held points wait for their own decision.
local share = user .. '\31' .. flag
local moved = tonumber(redis.call('HGET', KEYS[4], share) or '0')
redis.call('HDEL', KEYS[4], share)
if redis.call('HGET', KEYS[4], user) == flag then redis.call('HDEL', KEYS[4], user) end
if moved ~= 0 then
  redis.call('HINCRBY', KEYS[2], user .. '|h', -moved)
  local balance = tonumber(redis.call('HGET', KEYS[2], user .. '|a') or '0')
  redis.call('XADD', KEYS[3], '*', 'p', -moved, 'b', balance, 'd', ARGV[5], 'h', flag, 's', 'h')
  if mode == 'release' then
    balance = redis.call('HINCRBY', KEYS[2], user .. '|a', moved)
    redis.call('HINCRBY', KEYS[2], user .. '|e', moved)
    redis.call('XADD', KEYS[3], '*', 'p', moved, 'b', balance, 'd', ARGV[6], 'h', flag)
  end
end
redis.call('SET', KEYS[5], moved, 'EX', tonumber(ARGV[4]))
return {APPLIED, moved}
