-- KEYS[1] = key record (JSON); ARGV[1] = the revocation time. Sets revoked_at once, atomically
-- (a revoke is never lost to a concurrent "last used" write); returns the record as stored.
local raw = redis.call('GET', KEYS[1])
if not raw then
  return false
end
local key = cjson.decode(raw)
if key['revoked_at'] == nil or key['revoked_at'] == cjson.null then
  key['revoked_at'] = tonumber(ARGV[1])
  raw = cjson.encode(key)
  redis.call('SET', KEYS[1], raw)
end
return raw
