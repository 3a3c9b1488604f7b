-- WindowStore.append_batch (stream/windows.py): one batch of ticks applied to the windows and the
-- per-partition markers of one Redis node, atomically. See windows.py's docstring for the layout.
--
-- KEYS[1..n]      the window key of each distinct symbol of the batch
-- KEYS[n+1..n+m]  the marker key of each distinct partition of the whole batch (on a cluster,
--                 this node's markers; the node may hold none of the batch's symbols)
-- KEYS[n+m+1..]   the epoch key of each of those partitions, in the same order: the number of
--                 times the partition started afresh (a recreated topic); absent means 0
-- ARGV[1]         W, the window size
-- ARGV[2]         C, the most entries a key may hold (W + R): the ring grows up to it while the
--                 entries it holds are not known to be committed, and shrinks when they are
-- ARGV[3]         n, the number of window keys
-- ARGV[4]         the ticks, 40 bytes each, little-endian: u32 window key index (1-based),
--                 u32 marker key index (1-based, counted from KEYS[n+1]), f64 price, f64 offset,
--                 f64 ts, f64 partition (this order lets the script copy entries byte for byte)
-- ARGV[5]         per marker key, 32 bytes: f64 the partition; f64 the batch's highest offset of
--                 that partition (the marker is raised to it: every tick of the batch is judged,
--                 appended or not; -1: leave it); f64 1 if the caller has seen that marker before
--                 (written or read), else 0; f64 the partition's committed offset (the next one the
--                 group reads), -1 if not known: keys of that partition shrink to W entries plus
--                 what redelivery can still need, those at or above it (WindowStore.trim)
-- Returns {'lost', {marker indexes}} without changing anything when a marker the caller has
-- seen is gone (Redis flushed or restarted empty: the state must be rebuilt first), else
-- {outcomes, refs, blocks, tails, pending}; the script builds no per-tick window string:
--   outcomes  one byte per tick: p appended and completes a window, w appended while warming up,
--             r replayed with a window, R replayed without one (it was warming), l late,
--             d duplicate, o too old;
--   refs      per r tick, in tick order, u32 block number (1-based) and u32 index of the window's
--             first price in that block; index 0 means the key no longer holds the price just
--             before the window, else it is the block's price at index - 1;
--   blocks    runs of stored prices (float64) that hold the replayed windows, each from the price
--             before its first window where the key still holds it: consecutive redeliveries of a
--             symbol share one block;
--   tails     per window key, the up to W prices before its first append in this batch, as many
--             as the key holds (the caller completes the windows of appended ticks with their own
--             prices; the W-th is the price before the first window, which live scoring needs);
--   pending   per window key, '1' if it may still hold entries above the committed offset (or
--             none was given), '0' if it holds none (it has shrunk as far as it will).
-- All reads that can fail (layout checks) come before the first write, and nothing after the first
-- write can fail, so a batch is applied entirely or not at all.
local W = tonumber(ARGV[1])
local MAXCAP = tonumber(ARGV[2])
local NKEYS = tonumber(ARGV[3])
local BLOB = ARGV[4]
local MARKS = ARGV[5]
local HDR = 64        -- layout 2; layout 1 (56 bytes, no `first`) is rewritten as 2 when read
local SLACK = 64      -- free slots a key keeps past what it needs, so appends rarely regrow it
local LINEAGE = 16777216
local sunpack, sub, concat = struct.unpack, string.sub, table.concat

-- State loss first, before anything is read or written: one EXISTS per partition of the batch.
local lost = {}
local NMARKS = #MARKS / 32
local mark_of, tops, committed = {}, {}, {}
for mi = 1, NMARKS do
  local part, top, seen, com = sunpack('<dddd', MARKS, (mi - 1) * 32 + 1)
  mark_of[part], tops[mi], committed[mi] = mi, top, com
  if seen == 1 and redis.call('EXISTS', KEYS[NKEYS + mi]) == 0 then lost[#lost + 1] = mi end
end
if #lost > 0 then return {'lost', lost} end

-- A tick's lineage is its partition, plus 2^24 x the partition's epoch when it has started afresh
-- (a recreated topic): the symbols' entries from before are then another lineage, so the new
-- offsets are never taken for redeliveries (too_old). Stored in the entry's partition field.
local lineage_base = {}
for mi = 1, NMARKS do
  lineage_base[mi] = (tonumber(redis.call('GET', KEYS[NKEYS + NMARKS + mi])) or 0) * LINEAGE
end

-- the oldest entry a key holds: its ring wrapped past it, or it was never stored (grown, shrunk)
local function oldest(st, upto)
  return math.max(st.first, (upto or st.count) - st.cap)
end

local states, blocks, refs = {}, {}, {}
for k = 1, NKEYS do
  local key = KEYS[k]
  local h = redis.call('GETRANGE', key, 0, HDR - 1)
  local st = {key = key, count = 0, lstart = 0, cap = 0, first = 0, hdr = HDR,
              pprice = {}, pmeta = {}}
  if #h >= 56 then
    local version = sunpack('<d', h)
    if version == 2 and #h == HDR then
      version, st.cap, st.count, st.lstart, st.lts, st.loff, st.lpart, st.first =
        sunpack('<dddddddd', h)
    elseif version == 1 then
      version, st.cap, st.count, st.lstart, st.lts, st.loff, st.lpart = sunpack('<ddddddd', h)
      st.hdr, st.convert = 56, true
    else
      return redis.error_reply('tickcast: ' .. key .. ' has unknown layout ' .. version)
    end
  elseif #h ~= 0 then
    return redis.error_reply('tickcast: ' .. key .. ' is not a window')
  end
  local held = st.count - oldest(st)
  if held < math.min(st.count, W) then
    return redis.error_reply('tickcast: ' .. key .. ' holds ' .. held ..
      ' entries, fewer than the window size ' .. W)
  end
  states[k] = st
end

-- n entries of `width` bytes from seq `first` on, of the region at `base`, as stored in Redis
local function read_region(st, first, n, base, width)
  if n <= 0 then return '' end
  local slot = first % st.cap
  local n1 = math.min(n, st.cap - slot)
  local s = redis.call('GETRANGE', st.key, base + slot * width, base + (slot + n1) * width - 1)
  if n1 < n then
    s = s .. redis.call('GETRANGE', st.key, base, base + (n - n1) * width - 1)
  end
  return s
end

local function read_prices(st, first, n)
  return read_region(st, first, n, st.hdr, 8)
end

local function header(st)
  return struct.pack('<dddddddd', 2, st.cap, st.count, st.lstart, st.lts, st.loff, st.lpart,
    st.first)
end

-- rewrite the key with room for `newcap` entries, keeping the newest it holds below seq `upto`, at
-- most `most` (one SET: the string is exactly as long as the layout, with no spare allocation)
local function relayout(st, newcap, upto, most)
  local lo = oldest(st, upto)
  local keep = math.min(upto - lo, newcap, most or newcap)
  lo = upto - keep
  local s = lo % newcap
  local function place(data, width)
    local n1 = math.min(keep, newcap - s)
    if n1 == keep then
      return string.rep('\0', s * width) .. data .. string.rep('\0', (newcap - s - keep) * width)
    end
    return sub(data, n1 * width + 1) .. string.rep('\0', (newcap - keep) * width) ..
      sub(data, 1, n1 * width)
  end
  local prices = place(read_region(st, lo, keep, st.hdr, 8), 8)
  local metas = place(read_region(st, lo, keep, st.hdr + st.cap * 8, 24), 24)
  st.cap, st.first, st.hdr, st.convert, st.cfirst = newcap, lo, HDR, nil, nil
  redis.call('SET', st.key, header(st) .. prices .. metas)
end

-- Every check is done: keys of layout 1 are rewritten as layout 2, as they are.
for k = 1, NKEYS do
  local st = states[k]
  if st.convert then relayout(st, st.cap, st.count) end
end

-- read the block of the symbol's open replay span (before anything overwrites its slots)
local function close_span(st)
  local sp = st.span
  if sp == nil then return end
  blocks[sp.id] = read_prices(st, sp.first, sp.last - sp.first + 1)
  st.span = nil
end

-- write the pending entries: a contiguous run of slots, split where the ring wraps
local function flush(st)
  local n = #st.pprice
  if n == 0 then return end
  close_span(st)
  -- Grow, up to MAXCAP, rather than overwrite entries redelivery may still need.
  local need = math.min(MAXCAP, st.pfirst - oldest(st, st.pfirst) + n)
  if need > st.cap then
    relayout(st, math.min(MAXCAP, math.max(need, st.cap + math.floor(st.cap / 2), W + SLACK)),
      st.pfirst)
  end
  local cap = st.cap
  local skip = math.max(0, n - cap) -- more appends than slots: the older ones are overwritten
  local slot = (st.pfirst + skip) % cap
  local n1 = math.min(n - skip, cap - slot)
  local regions = {{st.pprice, st.hdr, 8}, {st.pmeta, st.hdr + cap * 8, 24}}
  for _, r in ipairs(regions) do
    local t, base, width = r[1], r[2], r[3]
    redis.call('SETRANGE', st.key, base + slot * width, concat(t, '', skip + 1, skip + n1))
    if skip + n1 < n then
      redis.call('SETRANGE', st.key, base, concat(t, '', skip + n1 + 1, n))
    end
  end
  redis.call('SETRANGE', st.key, 0, header(st))
  st.pprice, st.pmeta = {}, {}
  st.cfirst = nil
end

-- the source offset of entry `seq`, through a small cache of up to CHUNK entries around it:
-- a lookup probes near the newest entries first, then mostly asks for the next one
local CHUNK = 32
local function off_at(st, seq)
  local cf = st.cfirst
  if cf == nil or seq < cf or seq >= cf + st.clen then
    local slot = seq % st.cap
    local first = math.max(0, slot - CHUNK / 2)  -- slots, never across the end of the ring
    local n = math.min(st.cap, slot + CHUNK / 2) - first
    local base = st.hdr + st.cap * 8 + first * 24
    st.chunk = redis.call('GETRANGE', st.key, base, base + n * 24 - 1)
    cf = seq - (slot - first)
    st.cfirst, st.clen = cf, n
  end
  return (sunpack('<d', st.chunk, (seq - cf) * 24 + 1))
end

local function append(st, pos, ts, off, part, relabel)
  if st.tail == nil then -- first append of this symbol in the batch: Redis is current
    local have = math.min(st.count - oldest(st), W)
    st.tail = read_prices(st, st.count - have, have)
  end
  local i = #st.pprice + 1
  if i == 1 then st.pfirst = st.count end
  st.pprice[i] = sub(BLOB, pos + 8, pos + 15)
  if relabel then
    st.pmeta[i] = sub(BLOB, pos + 16, pos + 31) .. struct.pack('<d', part)
  else
    st.pmeta[i] = sub(BLOB, pos + 16, pos + 39)
  end
  st.count = st.count + 1
  st.lts, st.loff, st.lpart = ts, off, part
  if st.count >= W then return 'p' end
  return 'w'
end

local function redelivered(st, ts, off)
  flush(st)
  local cap = st.cap
  local first_held = oldest(st)
  local lo, hi = math.max(first_held, st.lstart), st.count - 1
  local j, found
  -- redeliveries come in offset order: try the entry after the last one found first
  if st.hint and st.hint + 1 >= lo and st.hint + 1 <= hi and off_at(st, st.hint + 1) == off then
    j, found = st.hint + 1, true
  else
    -- the last entry at or below `off` (offsets increase within a lineage): gallop back from
    -- the newest entry, since redeliveries are recent, then bisect
    local b, step = hi, 1
    while off_at(st, b) > off do
      if b == lo then return 'o' end
      hi = b - 1
      b = math.max(lo, b - step)
      step = step * 2
    end
    lo = b
    while lo < hi do
      local mid = math.floor((lo + hi + 1) / 2)
      if off_at(st, mid) <= off then lo = mid else hi = mid - 1 end
    end
    j = lo
    found = off_at(st, j) == off
  end
  if found then
    st.hint = j
    if j + 1 < W then return 'R' end
    local first = j - W + 1
    if first < first_held then return 'o' end
    -- the block starts at the price before the window when the key still holds it (scoring)
    local from = math.max(first - 1, first_held)
    local sp = st.span
    if sp == nil or from < sp.first then
      close_span(st)
      sp = {id = #blocks + 1, first = from, last = j}
      blocks[sp.id] = '' -- filled by close_span
      st.span = sp
    elseif j > sp.last then
      sp.last = j
    end
    refs[#refs + 1] = struct.pack('<I4I4', sp.id, first - sp.first)
    return 'r'
  end
  -- rejected the first time: the entry before it was the last one then
  local at = st.hdr + cap * 8 + (j % cap) * 24 + 8
  local tj = sunpack('<d', redis.call('GETRANGE', st.key, at, at + 7))
  if ts < tj then return 'l' elseif ts == tj then return 'd' end
  return 'o'
end

local outcomes = {}
local pos = 1
for i = 1, #BLOB / 40 do
  local ki, mi, off, ts, part = sunpack('<I4I4xxxxxxxxddd', BLOB, pos)
  local st = states[ki]
  local base = lineage_base[mi]
  if base ~= 0 then part = part + base end
  local code
  if st.count > 0 and (part ~= st.lpart or off > st.loff) then
    if ts > st.lts then
      if part ~= st.lpart then st.lstart = st.count end
      code = append(st, pos, ts, off, part, base ~= 0)
    elseif ts < st.lts then code = 'l' else code = 'd' end
  elseif st.count == 0 then
    code = append(st, pos, ts, off, part, base ~= 0)
  else
    code = redelivered(st, ts, off)
  end
  outcomes[i] = code
  pos = pos + 40
end

-- After a commit (WindowStore.trim): keep W entries and, of the key's current lineage, those at or
-- above the committed offset with the W before them (a redelivery's window and the price before
-- it, which live scoring needs; W entries are also what the next append reads). Returns '1' while
-- the key holds uncommitted entries, '0' once it holds none or the lineage is not the partition's
-- current one (a recreated topic: nothing of it can be redelivered).
local function shrink(st)
  if st.count == 0 then return '0' end
  local part = st.lpart % LINEAGE
  local mi = mark_of[part]
  if mi == nil or committed[mi] < 0 then return '1' end
  local c = committed[mi]
  local keep, pending = math.min(st.count, W), '0'
  if st.lpart == part + lineage_base[mi] and st.loff >= c then
    local lo, hi = math.max(oldest(st), st.lstart), st.count - 1
    while lo < hi do  -- the first entry at or above c (offsets increase within a lineage)
      local mid = math.floor((lo + hi) / 2)
      if off_at(st, mid) >= c then hi = mid else lo = mid + 1 end
    end
    keep = math.max(keep, st.count - math.max(oldest(st), lo - W))
    pending = '1'
  end
  local newcap = math.min(MAXCAP, keep + SLACK)
  if newcap + SLACK <= st.cap then relayout(st, newcap, st.count, keep) end
  return pending
end

local tails, pending = {}, {}
for k = 1, NKEYS do
  local st = states[k]
  close_span(st)
  flush(st)
  tails[k] = st.tail or ''
  pending[k] = shrink(st)
end
for mi = 1, NMARKS do
  local top = tops[mi]
  local mk = KEYS[NKEYS + mi]
  if top >= 0 then
    local cur = tonumber(redis.call('GET', mk))
    if cur == nil or cur < top then redis.call('SET', mk, string.format('%.0f', top)) end
  end
end
return {concat(outcomes), concat(refs), blocks, tails, concat(pending)}
