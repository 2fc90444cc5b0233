-- Append to a bounded list (server/store/redis.py): at most ARGV[2] items and, when ARGV[4] > 0,
-- at most ARGV[4] bytes (oldest dropped first; the newest item always stays). It expires ARGV[3]
-- ms after this write. Returns the number of items kept.
local n = redis.call('RPUSH', KEYS[1], ARGV[1])
local max_items, max_bytes = tonumber(ARGV[2]), tonumber(ARGV[4])
if n > max_items then
  redis.call('LTRIM', KEYS[1], -max_items, -1)
  n = max_items
end
if max_bytes > 0 then
  local items = redis.call('LRANGE', KEYS[1], 0, -1)
  local total = 0
  for i = 1, #items do total = total + #items[i] end
  local drop = 0
  while total > max_bytes and drop < n - 1 do
    drop = drop + 1
    total = total - #items[drop]
  end
  if drop > 0 then
    redis.call('LTRIM', KEYS[1], drop, -1)
    n = n - drop
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return n
