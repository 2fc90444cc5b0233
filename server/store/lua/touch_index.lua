-- Record a write to ARGV[1] in the index KEYS[1] (a sorted set scored by last write, in µs, kept
-- strictly increasing so that order is write order) and keep at most ARGV[2] members written
-- within ARGV[3] ms; returns the members pushed out, oldest first, for the caller to delete
-- (server/store/redis.py).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl * 1000)
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if top[2] and tonumber(top[2]) >= now then now = tonumber(top[2]) + 1 end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[2])
if over <= 0 then return {} end
local popped = redis.call('ZPOPMIN', KEYS[1], over)
local out = {}
for i = 1, #popped, 2 do out[#out + 1] = popped[i] end
return out
