-- WindowStore (stream/windows.py): raises each partition marker to an offset, never lowers it.
--
-- KEYS[i]   a marker key
-- ARGV[i]   the offset for KEYS[i]
-- Returns the number of markers.
for i = 1, #KEYS do
  local cur = tonumber(redis.call('GET', KEYS[i]))
  local off = tonumber(ARGV[i])
  if cur == nil or cur < off then redis.call('SET', KEYS[i], string.format('%.0f', off)) end
end
return #KEYS
