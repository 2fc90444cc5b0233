-- KEYS[1] = agent hash; ARGV = owner, record json, ttl ms, stale owner to replace ('' = none).
-- Stores the record unless another owner holds the agent; returns that owner, else nil.
local current = redis.call('HGET', KEYS[1], 'owner')
if current and current ~= ARGV[1] and current ~= ARGV[4] then
  return current
end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'data', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return false
