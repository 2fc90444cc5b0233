-- Fixed-window rate counter: KEYS[1] = bucket, ARGV[1] = window in ms.
-- Returns {count in this window, ms until the window resets}.
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
