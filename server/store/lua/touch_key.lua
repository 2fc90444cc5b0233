-- KEYS[1] = key record (JSON); ARGV[1] = the time it was used.
-- "Last used" changes that one field inside one atomic step, so it can never write back a
-- copy read before a revoke (issue 15: a GET-modify-SET undid concurrent revokes).
local raw = redis.call('GET', KEYS[1])
if not raw then
  return 0
end
local key = cjson.decode(raw)
key['last_used_at'] = tonumber(ARGV[1])
redis.call('SET', KEYS[1], cjson.encode(key))
return 1
