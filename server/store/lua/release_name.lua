-- KEYS[1] = index key; ARGV[1] = value. Deletes the name only while it still points at value.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
