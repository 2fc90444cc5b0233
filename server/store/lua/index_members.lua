-- The members of the index KEYS[1] (touch_index.lua's sorted set, scored by last write in µs)
-- written within the last ARGV[1] ms, oldest first. Read-only: touch_index.lua trims.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
return redis.call('ZRANGEBYSCORE', KEYS[1], string.format('(%d', now - tonumber(ARGV[1]) * 1000), '+inf')
