-- award.lua: apply a batch of credit operations on ONE (tenant, shard), each
-- atomically and idempotently: dedup -> throttle -> limits -> award -> outbox.
--
-- KEYS[1]  maintenance flag  string; while it exists nothing is applied
-- KEYS[2]  balances          hash  "<user>|a" available, "<user>|e" earned, "<user>|s" spent (points)
-- KEYS[3]  outbox            stream of ledger entries: fields p (points), b (balance
--                            after), d (the op's entry data, opaque here)
-- KEYS[4]  first award        hash  user -> occurred_at (ms) of the user's first paid
--                            credit (any action; newcomer boards read it)
-- KEYS[5..] referenced by index from the ops: dedup records (string),
--           per-period counter hashes, throttle keys (string, ms), board
--           sorted sets (member -> -score), board scope sets
--
-- ARGV[1]  mode: "apply", or "restore" (rebuild from the ledger: no checks,
--          no balance change, no outbox; points and balance come from the op)
-- ARGV[2]  outbox length bound (entries); at or above it awards are refused
--          with code 7 so a stalled flusher cannot exhaust memory; 0 = none
-- ARGV[3]  JSON array of ops, each a positional array:
--   [1]  dedup key index      [2]  dedup expire-at (unix s; restore: 0 = do not keep)
--   [3]  content fingerprint  [4]  user id
--   [5]  points per unit      [6]  quantity (>= 0)
--   [7]  limits   [[hash idx, field, max, "c"|"p"], ...]  "c" counts 1 per award, "p" points
--   [8]  counters [[hash idx, field, "c"|"p"], ...]       bumped on award
--   [9]  expiries [[hash idx, expire-at unix s], ...]     of the counter hashes the op touches
--   [10] occurred_at (ms)
--   [11] throttle [key idx, min interval ms, ttl ms], or 0 for none: the key is a
--        sorted set of awarded occurred_at times, kept ttl ms
--   [12] accumulator [hash idx, field, unit], or 0: collect the quantity there and
--        pay points per whole unit crossed
--   [13] outbox entry data (string; restore: unused)
--   [14] restore: the ledger's points   [15] restore: the ledger's balance_after
--   [17] restore: the outcome code to record (default 1; 3 for a credit the ledger
--        shows was not paid while the event's other credit was)
--   [16] boards: [template no., department id, group id, join ms (0 = unknown)], or 0
--        for none; updated on award with points > 0: score -= 1 ("c") or -= points
--        ("p"), so ascending order is best first and ties sort by member
-- ARGV[4]  JSON array of board templates (numbered from 1), each a list of slots:
--          [metric "c"|"p", newcomer window ms (0 = any user), group member 0|1,
--           scope "t"|"d"|"g", key idx ("t") or {department/group id: key idx},
--           expire-at (0 = never), scope set idx (0 for "t")]
--          A "d" slot uses the op's department, a "g" slot its group; a slot with
--          group member 1 ranks the op's group instead of the user.
-- ARGV[5]  now (unix s, the service clock): expire-at times become TTLs
--          from it, so state expires on the service's clock, not Redis's
--
-- Board increments are summed per (board, member) over the batch and applied at
-- the end: nothing in the script reads them, and a heavy user's many events in
-- one batch then cost one ZINCRBY per board instead of one each.
--
-- Returns a flat array, 5 integers per op, in op order:
--   code     1 awarded, 2 duplicate, 3 capped, 4 throttled,
--            7 outbox full (nothing applied), 8 maintenance (nothing applied),
--            9 event id reused with different content (nothing applied)
--   points   awarded (for 2 and 9: of the first recording)
--   balance  the user's available points after the op (for 2: after the first recording)
--   limit    1-based index into the op's limits of the cap that capped or clipped it, else 0
--   original for 2 and 9: the first recording's code, else 0
--
-- Dedup record value: "code:points:balance:limit:fingerprint".

local restore = ARGV[1] == 'restore'
local outbox_max = tonumber(ARGV[2])
local ops = cjson.decode(ARGV[3])
local templates = cjson.decode(ARGV[4])
local now_s = tonumber(ARGV[5])
local out = {}

-- Expiry at a unix second of the service clock; a time already past
-- deletes the key, as EXPIREAT would.
local function expire_at(key, at)
  if at > now_s then redis.call('EXPIRE', key, at - now_s) else redis.call('DEL', key) end
end

local function keep_until(key, value, at)
  if at > now_s then redis.call('SET', key, value, 'EX', at - now_s) else redis.call('DEL', key) end
end

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
local board_sums = {}
local board_order = {}

-- Award times a throttle keeps per (user, action).
local THROTTLE_KEPT = 64

-- Numbers in record strings: `..` would write 1e+14 from 10^14 on.
local function int(x)
  return string.format('%d', x)
end

local function hget_number(key, field)
  return tonumber(redis.call('HGET', key, field) or '0')
end

local function amount(metric, points)
  if metric == 'c' then return 1 end
  return points
end

for i = 1, #ops do
  local op = ops[i]
  local dkey, dx, fp, user = KEYS[op[1]], op[2], op[3], op[4]
  local pp, qty, lim, ctr, hx = op[5], op[6], op[7], op[8], op[9]
  local occ, iv, acc = op[10], op[11], op[12]
  local prev = redis.call('GET', dkey)
  if prev then
    local code, points, balance, limit, first_fp =
      string.match(prev, '^(%d+):(%-?%d+):(%-?%d+):(%d+):(.*)$')
    if first_fp == fp then
      emit(2, tonumber(points), tonumber(balance), tonumber(limit), tonumber(code))
    else
      emit(9, tonumber(points), tonumber(balance), tonumber(limit), tonumber(code))
    end
  else
    local avail_field = user .. '|a'
    local code = 0
    local limit = 0
    local points
    local acc_total
    if restore then
      points = op[14]
    elseif acc ~= 0 then
      local unit = acc[3]
      local before = hget_number(KEYS[acc[1]], acc[2])
      acc_total = before + qty
      points = pp * (math.floor(acc_total / unit) - math.floor(before / unit))
    else
      points = pp * qty
    end

    if not restore then
      if iv ~= 0 then
        -- Any awarded event of this throttle closer than the interval, before
        -- or after: events may arrive in any order.
        local ivkey = KEYS[iv[1]]
        local near = redis.call('ZRANGEBYSCORE', ivkey, '(' .. int(occ - iv[2]),
          '(' .. int(occ + iv[2]), 'LIMIT', 0, 1)
        if #near > 0 then
          code = 4
        elseif redis.call('ZCARD', ivkey) >= THROTTLE_KEPT then
          -- Only the latest times are kept: an event older than all of them
          -- cannot be checked, and is refused rather than paid twice.
          local oldest = redis.call('ZRANGE', ivkey, 0, 0, 'WITHSCORES')
          if occ < tonumber(oldest[2]) then code = 4 end
        end
      end
      if code == 0 then
        for j = 1, #lim do
          local l = lim[j]
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
      keep_until(dkey, code .. ':0:' .. int(balance) .. ':' .. limit .. ':' .. fp, dx)
      emit(code, 0, balance, limit, 0)
    else
      if acc_total then redis.call('HSET', KEYS[acc[1]], acc[2], acc_total) end
      for j = 1, #lim do
        local l = lim[j]
        redis.call('HINCRBY', KEYS[l[1]], l[2], amount(l[4], points))
      end
      for j = 1, #ctr do
        local c = ctr[j]
        local by = amount(c[3], points)
        if by ~= 0 then redis.call('HINCRBY', KEYS[c[1]], c[2], by) end
      end
      for j = 1, #hx do
        local h = hx[j]
        if not expiry_set[h[1]] then
          expiry_set[h[1]] = true
          expire_at(KEYS[h[1]], h[2])
        end
      end
      local balance
      if restore then
        balance = op[15]
      else
        balance = redis.call('HINCRBY', KEYS[2], avail_field, points)
        if points ~= 0 then
          redis.call('HINCRBY', KEYS[2], user .. '|e', points)
          redis.call('XADD', KEYS[3], '*', 'p', points, 'b', balance, 'd', op[13])
          outbox_len = outbox_len + 1
        end
        if iv ~= 0 then
          local ivkey = KEYS[iv[1]]
          redis.call('ZADD', ivkey, occ, int(occ))
          -- Older than any event still accepted can be compared with.
          redis.call('ZREMRANGEBYSCORE', ivkey, '-inf', '(' .. int(occ - iv[3]))
          -- And at most THROTTLE_KEPT times (memory stays bounded).
          redis.call('ZREMRANGEBYRANK', ivkey, 0, -THROTTLE_KEPT - 1)
          redis.call('PEXPIRE', ivkey, iv[3])
        end
      end
      local plan = op[16]
      local first = 0
      if points > 0 then
        -- Every paid credit, whether or not it feeds a board: a newcomers
        -- board added later must know who is not new.
        first = tonumber(redis.call('HGET', KEYS[4], user) or '0')
        if first == 0 or occ < first then
          redis.call('HSET', KEYS[4], user, occ)
          first = occ
        end
      end
      if points > 0 and plan ~= 0 then
        local since = first
        if plan[4] > 0 then since = plan[4] end
        local slots = templates[plan[1]]
        for j = 1, #slots do
          local s = slots[j]
          local key_idx, scope_id = s[5], 't'
          if s[4] ~= 't' then
            if s[4] == 'd' then scope_id = plan[2] else scope_id = plan[3] end
            key_idx = s[5][scope_id]
          end
          local member = user
          if s[3] == 1 then member = plan[3] end
          if key_idx and member ~= '' and (s[2] == 0 or occ - since < s[2]) then
            local sums = board_sums[key_idx]
            if not sums then
              sums = {}
              board_sums[key_idx] = sums
              -- The scope set records "d:<id>" / "g:<id>", as BoardRef scopes read.
              board_order[#board_order + 1] = {key_idx, s[6], s[7], s[4] .. ':' .. scope_id}
            end
            sums[member] = (sums[member] or 0) + amount(s[1], points)
          end
        end
      end
      if dx > 0 then
        local recorded = 1
        if restore and op[17] then recorded = op[17] end
        keep_until(dkey,
          recorded .. ':' .. int(points) .. ':' .. int(balance) .. ':' .. limit .. ':' .. fp, dx)
      end
      emit(1, points, balance, limit, 0)
    end
  end
end

for _, b in ipairs(board_order) do
  local key_idx, until_s, set_idx, scope = b[1], b[2], b[3], b[4]
  for member, by in pairs(board_sums[key_idx]) do
    redis.call('ZINCRBY', KEYS[key_idx], -by, member)
  end
  if set_idx ~= 0 then redis.call('SADD', KEYS[set_idx], scope) end
  if until_s > 0 then
    expire_at(KEYS[key_idx], until_s)
    if set_idx ~= 0 then expire_at(KEYS[set_idx], until_s) end
  end
end

return out
