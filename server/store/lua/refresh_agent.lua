-- KEYS[1] = agent hash; ARGV = owner, ttl ms. Heartbeat: extends only this owner's claim.
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
