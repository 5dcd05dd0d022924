-- balance.lua: one idempotent balance change on ONE (tenant, shard): a
-- redemption's spend, a refund, or an administrator's adjustment.
--
-- KEYS[1]  maintenance flag  string; while it exists nothing is applied
-- KEYS[2]  balances          hash  "<user>|a" available, "<user>|e" earned, "<user>|s" spent
-- KEYS[3]  outbox            stream of ledger entries (fields p, b, d)
-- KEYS[4]  dedup record      string "code:delta:balance:fingerprint"
--
-- ARGV[1]  mode: "apply", or "restore" (rebuild: only the dedup record is written)
-- ARGV[2]  user id
-- ARGV[3]  delta (points, signed, not 0)
-- ARGV[4]  lifetime field that moves with it: "e" (earned: adjustments) or
--          "s" (spent: spends count +, refunds -)
-- ARGV[5]  "1": refuse a change that would take available below 0; "2": the
--          same, and record the refusal so that every replay is refused too
--          (a redemption's spend: once it failed, it must never apply later)
-- ARGV[6]  dedup expire-at (unix s)
-- ARGV[7]  fingerprint of the change (a replay with other content is refused)
-- ARGV[8]  outbox entry data (opaque here)
-- ARGV[9]  outbox length bound (entries; 0 = none)
-- ARGV[10] restore mode: the ledger's balance_after
-- ARGV[11] now (unix s, the service clock): the dedup record expires
--          ARGV[6] - ARGV[11] seconds from now, on the service's clock
--
-- Returns {code, balance, available_before}:
--   code APPLIED, DUPLICATE (balance as after the first), INSUFFICIENT (with
--   ARGV[5] "2" recorded: a replay says so again), BACKPRESSURE (outbox full),
--   MAINTENANCE, KEY_REUSED (different content); the last four apply nothing.

-- Result codes: service/pointsd/service/domain StoreCode (tests/test_codec.py checks this block).
local APPLIED, DUPLICATE, INSUFFICIENT = 1, 2, 5
local BACKPRESSURE, MAINTENANCE, KEY_REUSED = 7, 8, 9

-- Numbers in record strings: `..` would write 1e+14 from 10^14 on.
local function int(x)
  return string.format('%d', x)
end

local mode, user, delta, lifetime = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local floor, expire_at, fp = ARGV[5] ~= '0', ARGV[6], ARGV[7]
local record_refusal = ARGV[5] == '2'
local ttl = tonumber(expire_at) - tonumber(ARGV[11])

-- The dedup record; one already past its retention is not kept.
local function remember(value)
  if ttl > 0 then redis.call('SET', KEYS[4], value, 'EX', ttl) end
end

local prev = redis.call('GET', KEYS[4])
if prev then
  local code, _, balance, first_fp = string.match(prev, '^(%d+):(%-?%d+):(%-?%d+):(.*)$')
  if first_fp ~= fp then return {KEY_REUSED, tonumber(balance), 0} end
  if tonumber(code) == INSUFFICIENT then
    return {INSUFFICIENT, tonumber(balance), tonumber(balance)}
  end
  return {DUPLICATE, tonumber(balance), 0}
end
if mode == 'restore' then
  remember(APPLIED .. ':' .. int(delta) .. ':' .. ARGV[10] .. ':' .. fp)
  return {APPLIED, tonumber(ARGV[10]), 0}
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {MAINTENANCE, 0, 0} end

local available = tonumber(redis.call('HGET', KEYS[2], user .. '|a') or '0')
if floor and available + delta < 0 then
  if record_refusal then
    remember(INSUFFICIENT .. ':0:' .. int(available) .. ':' .. fp)
  end
  return {INSUFFICIENT, available, available}
end
local outbox_max = tonumber(ARGV[9])
if outbox_max > 0 and redis.call('XLEN', KEYS[3]) >= outbox_max then
  return {BACKPRESSURE, available, available}
end

local balance = redis.call('HINCRBY', KEYS[2], user .. '|a', delta)
if lifetime == 's' then
  redis.call('HINCRBY', KEYS[2], user .. '|s', -delta)
else
  redis.call('HINCRBY', KEYS[2], user .. '|e', delta)
end
redis.call('XADD', KEYS[3], '*', 'p', delta, 'b', balance, 'd', ARGV[8])
remember(APPLIED .. ':' .. int(delta) .. ':' .. int(balance) .. ':' .. fp)
return {APPLIED, balance, available}
