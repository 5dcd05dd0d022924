-- award.lua: apply credit operations on ONE (tenant, shard), each atomically
-- and idempotently. An operation is a dedup record plus a program of
-- primitive steps (service/pointsd/service/domain/steps.py); mechanics are compiled onto the
-- primitives in Python, so this script holds no mechanic of its own.
-- Wire format 2, encoded and decoded by storage/pointsd/storage/redis/codec.py only.
--
-- KEYS[1]  maintenance flag  string; while it exists nothing is applied (apply mode)
-- KEYS[2]  balances          hash "<user>|a" available, "<user>|e" earned (points)
-- KEYS[3]  outbox            stream of ledger entries: p (points), b (balance
--                            after), d (the op's entry data, opaque here), and for
--                            a bonus row m ("<tag>\31<reason>")
-- KEYS[4..] referenced by index from steps and ops: dedup records (string),
--           per-period counter hashes, throttle sorted sets, day bitmaps,
--           board sorted sets (member -> -score) and their scope sets,
--           the first-award hash
--
-- ARGV[1]  wire format version: "2"
-- ARGV[2]  mode: "apply", or "restore" (rebuild: no maintenance check, no
--          outbox bound; each op says its points, balance and outcome)
-- ARGV[3]  now, unix s of the service clock: expire-at times become TTLs from
--          it, so state expires on the service's clock, not Redis's
-- ARGV[4]  outbox length bound (entries); at or above it awards that pay are
--          refused with BACKPRESSURE so a stalled flusher cannot exhaust memory; 0 = none
-- ARGV[5]  JSON array of steps, numbered from 1; each an object with "op":
--   "acc"      {h, c, unit, x, tiers} collect the quantity in counter c of hash
--              KEYS[h]; points = points per unit x whole units crossed, or with
--              tiers the sum of each crossed unit's price: the n-th unit of the
--              period tiers[n], past the list its last                   (check)
--   "scale"    {pct, add}       points = floor(points x pct / 100) + add, for an award
--              that pays (a campaign), before the caps                   (check)
--   "throttle" {uk, ms, keep}   refuse when an awarded time lies closer than ms;
--              the op's key op.k[uk] keeps award times for keep ms        (check)
--   "check"    {h, c, max, m, n} m "c": refuse at max; m "p": clip the points
--              to max - used, refuse when nothing is left; n = reported limit (check)
--   "bump"     {h, c, by, x}    counter += 1 ("c"), points ("p"), quantity ("q");
--              produces (old, new)
--   "peak"     {h, c, x, v}     counter = max(counter, quantity), or (v 1) of the last
--              produced value; produces (old, new)
--   "distinct" {h, c, of, max, x} count distinct op[of] values, at most max;
--              produces (old, new)
--   "day"      {uk, bit, scan, keep, cover, fh, fc, fmax, date, back, fwd} set bit
--              `bit` of bitmap op.k[uk]; produces the run of set bits (ORing
--              op.k[cover]) around it, before/after, and the run's first bit. With
--              fh (apply mode): missed bits between a new bit and the runs before
--              and after it use up freezes (counter fc of hash KEYS[fh], one per
--              missed bit, if enough are held) and are set in the cover; a bit the
--              cover held gives its freeze back (at most fmax held); freeze bonuses
--              are tagged with the dates (date: the bit's; back, fwd: the dates of
--              the bits before and after it, nearest first)
--   "cross"    {at: [[threshold, points, tag, reason, badge, freezes, run], ...], bk,
--              ph, px} (ph: the hash marking once-bonuses paid, px its expire-at)
--              bonus for every threshold with old < threshold <= new of the last
--              produced value; a once-bonus: its ledger row is keyed by user and
--              tag (run 1: tag .. "." .. the run's first bit); a badge ("" none) is
--              kept in the shard's badge hash KEYS[bk] ("<user>\31<badge>" ->
--              occurred_at); freezes > 0 are granted to
--              the preceding day step's freeze counter
--   "reach"    {at: [[threshold, tag, reason], ...], ph, px} a zero-point once-bonus for
--              every threshold the user's lifetime earned points crossed from
--              before the op to after it, its bonuses included (levels)
--   "credit"   {}               available and earned += points; the op's outbox
--              entry; produces (old, new) earned
--   "entry"    {pts, tag, why, badge, bk} a bonus, always (its row keyed by the award)
--   "first"    {h}              hash KEYS[h]: user -> occurred_at of the first paid credit
--   "board"    {slots: [{m, w, gm, sc, key, x, set}, ...]} for a paid credit: each
--              slot's board += 1 ("c") or points ("p"); sc "t" uses KEYS[key], "d"/"g"
--              KEYS[key[department or group id]]; gm 1 ranks the group; w > 0 only
--              within w ms of the user's first award (or op.join); x expire-at; set =
--              the scope set recording "d:<id>"/"g:<id>" (0 for "t")
--   x (expire-at, unix s; 0 = never) is set once per key per call.
-- ARGV[6]  JSON array of programs (arrays of step numbers), numbered from 1
-- ARGV[7]  JSON array of ops, each an object:
--   u user id, d dedup key index, x dedup expire-at (unix s; 0 = do not keep),
--   f content fingerprint, p points per unit, q quantity (>= 0), t occurred_at (ms),
--   P program number, k [key index, ...] of the op's own keys (steps' uk),
--   cp counterpart, dep department, grp group, join join ms (0 = unknown),
--   e outbox entry data (apply), r [points, balance, outcome, [[tag, points], ...]]
--   (restore: what the ledger says, the bonuses it paid included), h the
--   farming flag a restored row was held under (restore; 0 or absent: paid)
-- ARGV[8]  index in KEYS of the shard's holds hash (user -> farming flag id,
--          "<user>\31<flag id>" -> points held under that flag; apply mode), 0 = none
--
-- Held credits: the credit of a user the holds hash names (a farming flag,
-- service/pointsd/service/farming.py) runs its checks and the counting
-- steps (caps, throttles, task counters count it), but "credit" moves the
-- user's held balance ("<user>|h"), not available or earned, and its outbox
-- row carries h (the flag id) and s "h" (a row of the held balance); the
-- steps that pay more or rank (day, cross, reach, entry, first, board) are
-- skipped: a held event earns no bonus, streak day or board points. Its
-- dedup record ends ":!h", so a replay says held too.
--
-- Checks run first, in program order; only when none refused do the effects
-- run, in program order, then the bonuses are paid (available and earned move;
-- one outbox row each: field m "<tag>\31<reason>", o "1" for a once-bonus, g its
-- badge, z the streak freezes it granted), then the reach steps' milestones. Restore pays no bonus: the ledger
-- has their rows; they are only written into the dedup record. Board increments are summed per (board, member) over the
-- call and applied at the end.
--
-- Returns a flat array per op, in op order:
--   code, points, balance, limit, original, held (1: held by a farming flag),
--   bonus count, then tag, points per bonus
--   code: AWARDED, DUPLICATE, CAPPED, THROTTLED, BACKPRESSURE, MAINTENANCE,
--         ID_REUSED (the last three applied nothing); points and balance of the
--         first recording for DUPLICATE and ID_REUSED; limit: the n of the check
--         that capped or clipped, else 0; original: the first recording's code
--         for DUPLICATE and ID_REUSED, else 0
--
-- Dedup record: "code:points:balance:limit:fingerprint" and, when the credit
-- earned bonuses, ":tag=points,tag=points".

-- Result codes: service/pointsd/service/domain StoreCode (tests/test_codec.py checks this block).
local AWARDED, DUPLICATE, CAPPED, THROTTLED = 1, 2, 3, 4
local BACKPRESSURE, MAINTENANCE, ID_REUSED = 7, 8, 9

if ARGV[1] ~= '2' then
  return redis.error_reply('award.lua speaks wire format 2, got ' .. tostring(ARGV[1]))
end
local restore = ARGV[2] == 'restore'
local now_s = tonumber(ARGV[3])
local outbox_max = tonumber(ARGV[4])
local steps = cjson.decode(ARGV[5])
local programs = cjson.decode(ARGV[6])
local ops = cjson.decode(ARGV[7])
local holds_idx = tonumber(ARGV[8] or '0')
-- Nobody on the shard held (the common case): no per-credit lookup.
local anyone_held = holds_idx > 0 and redis.call('EXISTS', KEYS[holds_idx]) == 1
local SEP = '\31'
-- Award times a throttle keeps per (user, name).
local THROTTLE_KEPT = 64
local out = {}

local function emit(code, points, balance, limit, original, bonuses, held)
  local n = #out
  out[n + 1], out[n + 2], out[n + 3] = code, points, balance
  out[n + 4], out[n + 5], out[n + 6], out[n + 7] = limit, original, held or 0, #bonuses
  for i = 1, #bonuses do
    out[n + 6 + 2 * i], out[n + 7 + 2 * i] = bonuses[i][1], bonuses[i][2]
  end
end

local NONE = {}
if not restore and redis.call('EXISTS', KEYS[1]) == 1 then
  for _ = 1, #ops do emit(MAINTENANCE, 0, 0, 0, 0, NONE) end
  return out
end

local outbox_len = 0
if outbox_max > 0 and not restore then outbox_len = redis.call('XLEN', KEYS[3]) end

-- Numbers in record strings: `..` would write 1e+14 from 10^14 on.
local function int(x)
  return string.format('%d', x)
end

local function hget_number(key, field)
  return tonumber(redis.call('HGET', key, field) or '0')
end

-- Expiry at a unix second of the service clock, once per key and call; a
-- time already past deletes the key, as EXPIREAT would.
local expiry_set = {}
local function touch(idx, at)
  if at == 0 or expiry_set[idx] then return end
  expiry_set[idx] = true
  if at > now_s then redis.call('EXPIRE', KEYS[idx], at - now_s) else redis.call('DEL', KEYS[idx]) end
end

local function keep_until(key, value, at)
  if at > now_s then redis.call('SET', key, value, 'EX', at - now_s) else redis.call('DEL', key) end
end

local function amount(by, c, op)
  if by == 'c' then return 1 elseif by == 'p' then return c.points end
  return op.q
end

-- Length of the run of set bits left of p (ending at p - 1) and right of it,
-- in bitmap `key` ORed with `cover`, looking at most `scan` bits either way.
local function runs_around(key, cover, p, scan)
  local lo = math.max(0, p - scan)
  local first_byte = math.floor(lo / 8)
  local last_byte = math.floor((p + scan) / 8)
  local a = redis.call('GETRANGE', key, first_byte, last_byte)
  local b = ''
  if cover then b = redis.call('GETRANGE', cover, first_byte, last_byte) end
  local function set(i)
    local at = math.floor(i / 8) - first_byte + 1
    local byte = bit.bor(string.byte(a, at) or 0, string.byte(b, at) or 0)
    return bit.band(bit.rshift(byte, 7 - i % 8), 1) == 1
  end
  local left, i = 0, p - 1
  while i >= lo and set(i) do left, i = left + 1, i - 1 end
  local right = 0
  i = p + 1
  while i <= p + scan and set(i) do right, i = right + 1, i + 1 end
  return left, right
end

-- The primitives. CHECK[op](c, s, op) returns a refusal code or nil; APPLY[op]
-- does the step's effect. c is the credit's state: points, limit, balance,
-- old/new (the last produced value), first, bonuses.
local CHECK, APPLY = {}, {}

CHECK.acc = function(c, s, op)
  local before = hget_number(KEYS[s.h], op.u .. SEP .. s.c)
  c.acc_total = before + op.q
  local from, to = math.floor(before / s.unit), math.floor(c.acc_total / s.unit)
  local tiers = s.tiers
  if not tiers or #tiers == 0 then
    c.points = op.p * (to - from)
    return
  end
  -- Units from+1 .. to; those past the list all pay its last price.
  local points, n = 0, #tiers
  for u = from + 1, math.min(to, n) do points = points + tiers[u] end
  if to > n then points = points + (to - math.max(from, n)) * tiers[n] end
  c.points = points
end
APPLY.acc = function(c, s, op)
  redis.call('HSET', KEYS[s.h], op.u .. SEP .. s.c, c.acc_total)
  touch(s.h, s.x)
end

CHECK.scale = function(c, s, op)
  if c.points > 0 then c.points = math.floor(c.points * s.pct / 100) + s.add end
end

CHECK.throttle = function(c, s, op)
  -- Any awarded time of this throttle closer than the interval, before or
  -- after: events may arrive in any order.
  local key = KEYS[op.k[s.uk]]
  local near = redis.call('ZRANGEBYSCORE', key, '(' .. int(op.t - s.ms), '(' .. int(op.t + s.ms),
    'LIMIT', 0, 1)
  if #near > 0 then return THROTTLED end
  if redis.call('ZCARD', key) >= THROTTLE_KEPT then
    -- Only the latest times are kept: an event older than all of them
    -- cannot be checked, and is refused rather than paid twice.
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if op.t < tonumber(oldest[2]) then return THROTTLED end
  end
end
APPLY.throttle = function(c, s, op)
  local key = KEYS[op.k[s.uk]]
  redis.call('ZADD', key, op.t, int(op.t))
  -- Older than any event still accepted can be compared with.
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. int(op.t - s.keep))
  -- And at most THROTTLE_KEPT times (memory stays bounded).
  redis.call('ZREMRANGEBYRANK', key, 0, -THROTTLE_KEPT - 1)
  redis.call('PEXPIRE', key, s.keep)
end

CHECK.check = function(c, s, op)
  local used = hget_number(KEYS[s.h], op.u .. SEP .. s.c)
  if s.m == 'c' then
    if used + 1 > s.max then c.limit = s.n; return CAPPED end
  else
    local room = s.max - used
    if room <= 0 then c.limit = s.n; return CAPPED end
    if c.points > room then c.points = room; c.limit = s.n end
  end
end

APPLY.bump = function(c, s, op)
  local by = amount(s.by, c, op)
  if by == 0 then c.old, c.new = nil, nil; return end
  c.new = redis.call('HINCRBY', KEYS[s.h], op.u .. SEP .. s.c, by)
  c.old = c.new - by
  touch(s.h, s.x)
end

APPLY.peak = function(c, s, op)
  local value = op.q
  if s.v == 1 then value = c.new end
  local field = op.u .. SEP .. s.c
  local was = hget_number(KEYS[s.h], field)
  c.old, c.new = was, was
  if value and value > was then
    redis.call('HSET', KEYS[s.h], field, value)
    c.new = value
  end
  touch(s.h, s.x)
end

APPLY.distinct = function(c, s, op)
  local field = op.u .. SEP .. s.c
  local count = hget_number(KEYS[s.h], field)
  c.old, c.new = count, count
  local member = op[s.of]
  if member and member ~= '' and count < s.max
      and redis.call('HSETNX', KEYS[s.h], field .. SEP .. '=' .. member, 1) == 1 then
    c.new = redis.call('HINCRBY', KEYS[s.h], field, 1)
  end
  touch(s.h, s.x)
end

local function marked(key, cover, i)
  if i < 0 then return false end
  if redis.call('GETBIT', key, i) == 1 then return true end
  return cover ~= nil and redis.call('GETBIT', cover, i) == 1
end

local function freeze_bonus(c, kind, date, reason)
  c.bonuses[#c.bonuses + 1] = {kind .. '.' .. date, 0, reason, true, '', 0, 0}
end

-- Cover the missed bits between the newly marked bit and the nearest marked
-- one in direction dir (-1 before, +1 after) with held freezes, when enough
-- are held for all of them; returns how many it covered. s.back / s.fwd
-- hold the dates (YYYYMMDD) of the bits before / after, nearest first.
local function bridge(c, s, key, cover, dir, held)
  if held == 0 or marked(key, cover, s.bit + dir) then return 0 end
  local dates = s.back
  if dir > 0 then dates = s.fwd end
  for gap = 1, held do
    local q = s.bit + dir * (gap + 1)
    if q < 0 then return 0 end
    if marked(key, cover, q) then
      for k = 1, gap do
        redis.call('SETBIT', cover, s.bit + dir * k, 1)
        freeze_bonus(c, 'freeze', dates[k], 'Streak freeze used for a missed working day')
      end
      return gap
    end
  end
  return 0
end

-- Freezes for a newly marked bit (apply mode). A bit a freeze covered (a late
-- event for that day): the freeze comes back and the run is unchanged
-- (returns nil). Otherwise missed bits before and after it are bridged with
-- held freezes, as they would have been had the events come in order;
-- returns the bits covered before and after.
local function use_freezes(c, s, op, key, cover)
  local field = op.u .. SEP .. s.fc
  local held = hget_number(KEYS[s.fh], field)
  if redis.call('GETBIT', cover, s.bit) == 1 then
    redis.call('SETBIT', cover, s.bit, 0)
    if held < s.fmax then redis.call('HSET', KEYS[s.fh], field, held + 1) end
    freeze_bonus(c, 'freeze-back', s.date, 'Streak freeze returned: the day was active after all')
    return nil
  end
  local before = bridge(c, s, key, cover, -1, held)
  local after = bridge(c, s, key, cover, 1, held - before)
  if before + after > 0 then redis.call('HSET', KEYS[s.fh], field, held - before - after) end
  return before, after
end

APPLY.day = function(c, s, op)
  local key = KEYS[op.k[s.uk]]
  local cover = nil
  if s.cover ~= 0 then cover = KEYS[op.k[s.cover]] end
  local was = redis.call('SETBIT', key, s.bit, 1)
  local before, after, covered = 0, 0, false
  if was == 0 and cover and s.fh and not restore then
    before, after = use_freezes(c, s, op, key, cover)
    if before == nil then covered, before, after = true, 0, 0 end
  end
  if s.keep > 0 then
    redis.call('EXPIRE', key, s.keep)
    if cover and redis.call('EXISTS', cover) == 1 then redis.call('EXPIRE', cover, s.keep) end
  end
  local left, right = runs_around(key, cover, s.bit, s.scan)
  c.new = left + 1 + right
  -- The longest run before this event: none of the days just covered.
  if was == 1 or covered then c.old = c.new else c.old = math.max(left - before, right - after) end
  c.run_start = s.bit - left
  if s.fh then c.freeze = {s.fh, op.u .. SEP .. s.fc, s.fmax} end
end

-- Once-bonuses already paid are marked in hash KEYS[s.ph] (a field
-- "<user>\31!<tag>", kept with the period): a threshold crossed again (a
-- target changed, points taken back) pays nothing twice.
local function first_time(s, op, tag)
  if not s.ph or s.ph == 0 then return true end
  local fresh = redis.call('HSETNX', KEYS[s.ph], op.u .. SEP .. '!' .. tag, 1) == 1
  touch(s.ph, s.px or 0)
  return fresh
end

-- A bonus: {tag, points, reason, once, badge, badge hash key index, freezes granted}.
local function badge_key(s, op)
  if s.bk and s.bk ~= 0 then return s.bk end
  return 0
end

APPLY.cross = function(c, s, op)
  if not c.old then return end
  for _, t in ipairs(s.at) do
    local tag = t[3]
    if t[7] == 1 and c.run_start then tag = tag .. '.' .. c.run_start end
    if c.old < t[1] and t[1] <= c.new and first_time(s, op, tag) then
      local granted = 0
      if (t[6] or 0) > 0 and c.freeze then
        local h, field, most = c.freeze[1], c.freeze[2], c.freeze[3]
        local held = hget_number(KEYS[h], field)
        granted = math.max(0, math.min(t[6], most - held))
        if granted > 0 then redis.call('HSET', KEYS[h], field, held + granted) end
      end
      c.bonuses[#c.bonuses + 1] = {tag, t[2], t[4], true, t[5] or '', badge_key(s, op), granted}
    end
  end
end

APPLY.reach = function(c, s, op)
  c.reach = s
end

APPLY.credit = function(c, s, op)
  if c.hold then
    c.balance = hget_number(KEYS[2], op.u .. '|a')
    if c.points ~= 0 then
      redis.call('HINCRBY', KEYS[2], op.u .. '|h', c.points)
      -- What this flag holds of the user's held points: its settlement
      -- moves exactly these (another flag's are its own).
      if holds_idx > 0 then
        redis.call('HINCRBY', KEYS[holds_idx], op.u .. SEP .. c.hold, c.points)
      end
      redis.call('XADD', KEYS[3], '*', 'p', c.points, 'b', c.balance, 'd', op.e, 'h', c.hold,
        's', 'h')
      outbox_len = outbox_len + 1
    end
    c.old, c.new = nil, nil
    return
  end
  c.balance = redis.call('HINCRBY', KEYS[2], op.u .. '|a', c.points)
  if c.points ~= 0 then
    c.new = redis.call('HINCRBY', KEYS[2], op.u .. '|e', c.points)
    c.old = c.new - c.points
    c.earned = c.new
    redis.call('XADD', KEYS[3], '*', 'p', c.points, 'b', c.balance, 'd', op.e)
    outbox_len = outbox_len + 1
  else
    c.old, c.new = nil, nil
  end
end

APPLY.entry = function(c, s, op)
  c.bonuses[#c.bonuses + 1] = {s.tag, s.pts, s.why, false, s.badge or '', badge_key(s, op), 0}
end

APPLY.first = function(c, s, op)
  if c.points <= 0 then return end
  -- Every paid credit, whether or not it feeds a board: a newcomers board
  -- added later must know who is not new.
  local first = tonumber(redis.call('HGET', KEYS[s.h], op.u) or '0')
  if first == 0 or op.t < first then
    redis.call('HSET', KEYS[s.h], op.u, op.t)
    first = op.t
  end
  c.first = first
end

local board_sums, board_order = {}, {}
APPLY.board = function(c, s, op)
  if c.points <= 0 then return end
  local since = c.first or op.t
  if op.join and op.join > 0 then since = op.join end
  for _, slot in ipairs(s.slots) do
    local key_idx, scope_id = slot.key, 't'
    if slot.sc ~= 't' then
      if slot.sc == 'd' then scope_id = op.dep or '' else scope_id = op.grp or '' end
      key_idx = slot.key[scope_id]
    end
    local member = op.u
    if slot.gm == 1 then member = op.grp or '' end
    if key_idx and member ~= '' and (slot.w == 0 or op.t - since < slot.w) then
      local sums = board_sums[key_idx]
      if not sums then
        sums = {}
        board_sums[key_idx] = sums
        -- The scope set records "d:<id>" / "g:<id>", as BoardRef scopes read.
        board_order[#board_order + 1] = {key_idx, slot.x, slot.set, slot.sc .. ':' .. scope_id}
      end
      local by = 1
      if slot.m == 'p' then by = c.points end
      sums[member] = (sums[member] or 0) + by
    end
  end
end

-- Pay one bonus (apply mode): its points, its outbox row, its badge.
local function pay(c, op, b)
  if b[2] ~= 0 then
    c.balance = redis.call('HINCRBY', KEYS[2], op.u .. '|a', b[2])
    redis.call('HINCRBY', KEYS[2], op.u .. '|e', b[2])
  end
  local row = {'p', b[2], 'b', c.balance, 'd', op.e, 'm', b[1] .. SEP .. b[3]}
  if b[4] then row[#row + 1], row[#row + 2] = 'o', '1' end
  if (b[7] or 0) > 0 then row[#row + 1], row[#row + 2] = 'z', b[7] end
  if b[5] ~= '' then
    row[#row + 1], row[#row + 2] = 'g', b[5]
    if b[6] ~= 0 then redis.call('HSETNX', KEYS[b[6]], op.u .. SEP .. b[5], int(op.t)) end
  end
  redis.call('XADD', KEYS[3], '*', unpack(row))
  outbox_len = outbox_len + 1
end

-- Steps a held credit skips: they pay more than its points, or rank it.
local SKIP_HELD = {day = true, cross = true, reach = true, entry = true, first = true, board = true}

local function record(code, c, fp)
  local text = code .. ':' .. int(c.points) .. ':' .. int(c.balance) .. ':' .. c.limit .. ':' .. fp
  if c.hold then return text .. ':!h' end
  if #c.bonuses > 0 then
    local parts = {}
    for i, b in ipairs(c.bonuses) do parts[i] = b[1] .. '=' .. int(b[2]) end
    text = text .. ':' .. table.concat(parts, ',')
  end
  return text
end

local function recorded_bonuses(text)
  local bonuses = {}
  for tag, points in string.gmatch(text or '', '([^,=]+)=(%-?%d+)') do
    bonuses[#bonuses + 1] = {tag, tonumber(points)}
  end
  return bonuses
end

for i = 1, #ops do
  local op = ops[i]
  local dkey = KEYS[op.d]
  local prev = redis.call('GET', dkey)
  if prev then
    local code, points, balance, limit, first_fp, extra =
      string.match(prev, '^(%d+):(%-?%d+):(%-?%d+):(%d+):([^:]*):?(.*)$')
    local same = DUPLICATE
    if first_fp ~= op.f then same = ID_REUSED end
    local was_held = 0
    if extra == '!h' then was_held = 1 end
    emit(same, tonumber(points), tonumber(balance), tonumber(limit), tonumber(code),
      recorded_bonuses(extra), was_held)
  else
    local program = programs[op.P]
    local c = {points = op.p * op.q, limit = 0, bonuses = {}}
    if op.r then
      c.points = op.r[1]
      if op.h and op.h ~= 0 then c.hold = op.h end
    elseif anyone_held then
      c.hold = redis.call('HGET', KEYS[holds_idx], op.u) or nil
    end
    local code = nil
    for j = 1, #program do
      local s = steps[program[j]]
      local check = CHECK[s.op]
      if check then
        code = check(c, s, op)
        if code then break end
      end
    end
    if not code and c.points > 0 and outbox_max > 0 and outbox_len >= outbox_max then
      code = BACKPRESSURE
    end
    if code == BACKPRESSURE then
      emit(BACKPRESSURE, 0, 0, 0, 0, NONE)
    elseif code then
      c.points = 0
      c.balance = hget_number(KEYS[2], op.u .. '|a')
      keep_until(dkey, record(code, c, op.f), op.x)
      emit(code, 0, c.balance, c.limit, 0, NONE)
    else
      for j = 1, #program do
        local s = steps[program[j]]
        local apply = APPLY[s.op]
        if apply and not (c.hold and SKIP_HELD[s.op]) then apply(c, s, op) end
      end
      if op.r then
        c.balance = op.r[2]
        c.bonuses = {}
        for _, b in ipairs(op.r[4] or NONE) do c.bonuses[#c.bonuses + 1] = {b[1], b[2]} end
      else
        if not c.balance then c.balance = hget_number(KEYS[2], op.u .. '|a') end
        local paid = 0
        for _, b in ipairs(c.bonuses) do
          pay(c, op, b)
          paid = paid + b[2]
        end
        if c.reach and (c.earned or paid ~= 0) then
          -- Levels: from the earned points before this op to after it,
          -- the bonuses just paid included (nothing moved: nothing to reach).
          local after
          if c.earned then after = c.earned + paid else after = hget_number(KEYS[2], op.u .. '|e') end
          local before = after - c.points - paid
          for _, t in ipairs(c.reach.at) do
            if before < t[1] and t[1] <= after and first_time(c.reach, op, t[2]) then
              local b = {t[2], 0, t[3], true, '', 0, 0}
              c.bonuses[#c.bonuses + 1] = b
              pay(c, op, b)
            end
          end
        end
      end
      if op.x > 0 then
        local recorded = AWARDED
        if op.r then recorded = op.r[3] end
        keep_until(dkey, record(recorded, c, op.f), op.x)
      end
      local held = 0
      if c.hold then held = 1 end
      emit(AWARDED, c.points, c.balance, c.limit, 0, c.bonuses, held)
    end
  end
end

for _, b in ipairs(board_order) do
  local key_idx, expire_at, set_idx, scope = b[1], b[2], b[3], b[4]
  for member, by in pairs(board_sums[key_idx]) do
    redis.call('ZINCRBY', KEYS[key_idx], -by, member)
  end
  if set_idx ~= 0 then redis.call('SADD', KEYS[set_idx], scope) end
  touch(key_idx, expire_at)
  if set_idx ~= 0 then touch(set_idx, expire_at) end
end

return out
