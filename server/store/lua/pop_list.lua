-- KEYS[1] = list. Reads and deletes it in one step.
local items = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
return items
