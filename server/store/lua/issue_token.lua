-- Write one token (a cluster's mint; single nodes batch in mint_batch.lua): its value is the run
-- id of the Redis process that holds it, which consume_token.lua checks.
return redis.call('SET', KEYS[1], string.match(redis.call('INFO', 'server'), 'run_id:(%x+)'), 'PX', ARGV[1])
