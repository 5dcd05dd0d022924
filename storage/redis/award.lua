-- award.lua: apply a batch of credit operations on ONE (tenant, shard), each
-- atomically and idempotently: dedup -> throttle -> limits -> award -> outbox.
--
-- KEYS[1]  maintenance flag  string; while it exists nothing is applied
-- KEYS[2]  balances          hash  "<user>|a" available, "<user>|e" earned, "<user>|s" spent (points)
-- KEYS[3]  outbox            stream of ledger entries (fields k u p b m)
-- KEYS[4..] referenced by index from the ops: dedup records (string),
--           per-period counter hashes, throttle keys (string, ms)
--
-- ARGV[1]  mode: "apply", or "restore" (rebuild from the ledger: no checks,
--          no balance change, no outbox; points and balance come from the op)
-- ARGV[2]  outbox length bound (entries); at or above it awards are refused
--          with code 7 so a stalled flusher cannot exhaust memory; 0 = none
-- ARGV[3]  JSON array of ops:
--   d   dedup key index     dx dedup expire-at (unix s; restore: 0 = do not keep)
--   f   content fingerprint
--   u   user id             pp points per unit            q  quantity (>= 0)
--   acc [hash idx, field, unit] or absent: collect q there, pay pp per whole unit crossed
--   lim [[hash idx, field, max, "c"|"p"], ...]  caps; "c" counts 1 per award, "p" counts points
--   ctr [[hash idx, field, "c"|"p"], ...]       counters bumped on award
--   hx  [[hash idx, expire-at unix s], ...]     expiry of every counter hash the op touches
--   iv  [key idx, min interval ms, ttl ms] or absent      o  occurred_at (ms)
--   k   ledger entry key    m  ledger meta (opaque JSON string)
--   fp, fb  restore mode: the ledger's points and balance_after
--
-- Returns a flat array, 5 integers per op, in op order:
--   code     1 awarded, 2 duplicate, 3 capped, 4 throttled,
--            7 outbox full (nothing applied), 8 maintenance (nothing applied),
--            9 event id reused with different content (nothing applied)
--   points   awarded (for 2 and 9: of the first recording)
--   balance  the user's available points after the op (for 2: after the first recording)
--   limit    1-based index into lim of the cap that capped or clipped the award, else 0
--   original for 2 and 9: the first recording's code, else 0
--
-- Dedup record value: "code:points:balance:limit:fingerprint".

local restore = ARGV[1] == 'restore'
local outbox_max = tonumber(ARGV[2])
local ops = cjson.decode(ARGV[3])
local out = {}

local function emit(code, points, balance, limit, original)
  out[#out + 1] = code
  out[#out + 1] = points
  out[#out + 1] = balance
  out[#out + 1] = limit
  out[#out + 1] = original
end

if not restore and redis.call('EXISTS', KEYS[1]) == 1 then
  for _ = 1, #ops do emit(8, 0, 0, 0, 0) end
  return out
end

local outbox_len = 0
if outbox_max > 0 then outbox_len = redis.call('XLEN', KEYS[3]) end
local expiry_set = {}

local function hget_number(key, field)
  return tonumber(redis.call('HGET', key, field) or '0')
end

local function amount(metric, points)
  if metric == 'c' then return 1 end
  return points
end

for i = 1, #ops do
  local op = ops[i]
  local dkey = KEYS[op.d]
  local prev = redis.call('GET', dkey)
  if prev then
    local code, points, balance, limit, fp = string.match(prev, '^(%d+):(%-?%d+):(%-?%d+):(%d+):(.*)$')
    if fp == op.f then
      emit(2, tonumber(points), tonumber(balance), tonumber(limit), tonumber(code))
    else
      emit(9, tonumber(points), tonumber(balance), tonumber(limit), tonumber(code))
    end
  else
    local avail_field = op.u .. '|a'
    local code = 0
    local limit = 0
    local points
    local acc_total
    if restore then
      points = op.fp
    elseif op.acc then
      local unit = op.acc[3]
      local before = hget_number(KEYS[op.acc[1]], op.acc[2])
      acc_total = before + op.q
      points = op.pp * (math.floor(acc_total / unit) - math.floor(before / unit))
    else
      points = op.pp * op.q
    end

    if not restore then
      if op.iv then
        local last = redis.call('GET', KEYS[op.iv[1]])
        if last and math.abs(op.o - tonumber(last)) < op.iv[2] then code = 4 end
      end
      if code == 0 then
        for j = 1, #op.lim do
          local l = op.lim[j]
          local used = hget_number(KEYS[l[1]], l[2])
          if l[4] == 'c' then
            if used + 1 > l[3] then code = 3; limit = j; break end
          else
            local room = l[3] - used
            if room <= 0 then code = 3; limit = j; break end
            if points > room then points = room; limit = j end
          end
        end
      end
      if code == 0 and points > 0 and outbox_max > 0 and outbox_len >= outbox_max then
        code = 7
      end
    end

    if code == 7 then
      emit(7, 0, 0, 0, 0)
    elseif code ~= 0 then
      local balance = hget_number(KEYS[2], avail_field)
      redis.call('SET', dkey, code .. ':0:' .. balance .. ':' .. limit .. ':' .. op.f, 'EXAT', op.dx)
      emit(code, 0, balance, limit, 0)
    else
      if op.acc and acc_total then redis.call('HSET', KEYS[op.acc[1]], op.acc[2], acc_total) end
      for j = 1, #op.lim do
        local l = op.lim[j]
        redis.call('HINCRBY', KEYS[l[1]], l[2], amount(l[4], points))
      end
      for j = 1, #op.ctr do
        local c = op.ctr[j]
        local by = amount(c[3], points)
        if by ~= 0 then redis.call('HINCRBY', KEYS[c[1]], c[2], by) end
      end
      for j = 1, #op.hx do
        local h = op.hx[j]
        if not expiry_set[h[1]] then
          expiry_set[h[1]] = true
          redis.call('EXPIREAT', KEYS[h[1]], h[2])
        end
      end
      local balance
      if restore then
        balance = op.fb
      else
        balance = redis.call('HINCRBY', KEYS[2], avail_field, points)
        if points ~= 0 then
          redis.call('HINCRBY', KEYS[2], op.u .. '|e', points)
          redis.call('XADD', KEYS[3], '*', 'k', op.k, 'u', op.u, 'p', points, 'b', balance, 'm', op.m)
          outbox_len = outbox_len + 1
        end
        if op.iv then
          local ivkey = KEYS[op.iv[1]]
          local last = tonumber(redis.call('GET', ivkey) or '0')
          redis.call('SET', ivkey, math.max(last, op.o), 'PX', op.iv[3])
        end
      end
      if op.dx > 0 then
        redis.call('SET', dkey, '1:' .. points .. ':' .. balance .. ':' .. limit .. ':' .. op.f, 'EXAT', op.dx)
      end
      emit(1, points, balance, limit, 0)
    end
  end
end

return out
