-- One mint in one command (single-node stores; a cluster spreads these keys over shards).
-- KEYS[1] = token key; KEYS[2..n] = rate-limit buckets.
-- ARGV[1] = token ttl ms; for bucket i (KEYS[i+1]): ARGV[2i] = window ms, ARGV[2i+1] = limit.
-- Counts every bucket (a new window gets its expiry), writes the token only when every bucket
-- is within its limit, and returns {count, ms left} per bucket for the caller to judge.
local out = {}
local allowed = true
for i = 1, #KEYS - 1 do
  local key = KEYS[i + 1]
  local n = redis.call('INCR', key)
  redis.call('PEXPIRE', key, ARGV[2 * i], 'NX')
  out[#out + 1] = n
  out[#out + 1] = redis.call('PTTL', key)
  if n > tonumber(ARGV[2 * i + 1]) then
    allowed = false
  end
end
if allowed then
  redis.call('SET', KEYS[1], 1, 'PX', ARGV[1])
end
return out
