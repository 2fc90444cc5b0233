-- KEYS[1] = index key; ARGV = value, ttl ms. Points the name at value unless it points elsewhere.
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then
  return current
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
