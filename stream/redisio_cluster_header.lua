#!lua flags=allow-cross-slot-keys
-- Commands.evalsha (stream/redisio.py) puts this before every script it runs on a Redis Cluster
-- (the shebang must stay the first line). The flag lets the script use keys of several slots of
-- its node; the call declares no keys (Redis would refuse keys of different slots as CROSSSLOT)
-- and sends ARGV = (number of keys, keys..., args...). KEYS and ARGV are rebuilt from that here,
-- so the scripts themselves read KEYS and ARGV as on one Redis.
local SENT = ARGV
local KEYS, ARGV = {}, {}
for i = 1, tonumber(SENT[1]) do KEYS[i] = SENT[i + 1] end
for i = #KEYS + 2, #SENT do ARGV[#ARGV + 1] = SENT[i] end
