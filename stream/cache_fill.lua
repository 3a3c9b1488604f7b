-- ForecastCache.put_many (stream/cache.py): store a batch of model outputs with one TTL.
--
-- KEYS[i]       cache key i
-- ARGV[1]       TTL in seconds
-- ARGV[i + 1]   the value for KEYS[i]
-- Returns the number of keys set.
--
-- One command instead of a pipeline of SETs: redis-py spends ~150 us per pipelined command in
-- Python packing and parsing, which for a 1,000-window batch cost more than the model call.
local ttl = ARGV[1]
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ttl)
end
return #KEYS
