-- WindowStore.start_afresh (stream/windows.py): a partition of a recreated topic starts afresh on
-- one Redis node. Its marker is deleted (the old topic's offsets mean nothing in the new one) and
-- its epoch raised, so the symbols' entries from the old topic are another lineage to the append
-- script: new ticks are judged by event time, never taken for redeliveries of the old offsets.
--
-- KEYS[2i-1]   the marker key of partition i
-- KEYS[2i]     the epoch key of partition i (same node)
-- Returns the new epochs.
local epochs = {}
for i = 1, #KEYS / 2 do
  redis.call('DEL', KEYS[2 * i - 1])
  epochs[i] = redis.call('INCR', KEYS[2 * i])
end
return epochs
