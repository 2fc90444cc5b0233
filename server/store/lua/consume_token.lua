-- Spend a token (server/store/redis.py): 1 the first time, 0 when it is unknown or spent, -1 when
-- it was written by an earlier Redis process (a restart from RDB/AOF or a failover restored it).
local epoch = redis.call('GETDEL', KEYS[1])
if not epoch then return 0 end
if epoch == string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') then return 1 end
return -1
