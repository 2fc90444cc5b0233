-- KEYS[1] = agent hash; ARGV[1] = owner. Deletes only what this owner still holds.
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
