-- KEYS[1] = key record (JSON); ARGV[1] = the revocation time. Sets revoked_at atomically (a
-- revoke is never lost to a concurrent "last used" write), only ever earlier: a revoke during a
-- rotation's grace ends the key now. Returns the record as stored.
local raw = redis.call('GET', KEYS[1])
if not raw then
  return false
end
local key = cjson.decode(raw)
if key['revoked_at'] == nil or key['revoked_at'] == cjson.null or key['revoked_at'] > tonumber(ARGV[1]) then
  key['revoked_at'] = tonumber(ARGV[1])
  raw = cjson.encode(key)
  redis.call('SET', KEYS[1], raw)
end
return raw
