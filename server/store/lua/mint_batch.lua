-- The mints of one event-loop turn in one command (single-node stores; server/store/mints.py).
-- KEYS[1..B] = rate-limit buckets; KEYS[B+1..B+N] = the token keys, in mint order.
-- ARGV[1] = B; then per bucket: window ms, limit, hits in this batch;
-- then per token, in mint order: ttl ms, its bucket count m, then m bucket indexes (1-based).
-- Each bucket is counted once for the whole batch (INCRBY, a new window gets its expiry); each
-- mint then takes the next count of each of its buckets, and its token is written only when
-- every one is within its limit. Returns {count before this batch, ms left} per bucket, from
-- which the caller replays the same judgement for each mint; {-1, -1} for a bucket that cannot
-- be counted (not a counter: someone else's key), whose mints are refused and write nothing
-- while the batch's other mints go on. A token's value is the run id of this Redis process
-- (consume_token.lua refuses a token another process wrote: one restored by a restart).
local buckets = tonumber(ARGV[1])
local count, limit, out = {}, {}, {}
local a = 2
for b = 1, buckets do
  local hits = tonumber(ARGV[a + 2])
  local n = redis.pcall('INCRBY', KEYS[b], hits)
  if type(n) == 'number' then
    redis.call('PEXPIRE', KEYS[b], ARGV[a], 'NX')
    count[b] = n - hits
    limit[b] = tonumber(ARGV[a + 1])
    out[2 * b - 1] = n - hits
    out[2 * b] = redis.call('PTTL', KEYS[b])
  else
    count[b] = 0
    limit[b] = -1 -- every mint on it is refused
    out[2 * b - 1] = -1
    out[2 * b] = -1
  end
  a = a + 3
end
local token = buckets
local epoch = nil
while a <= #ARGV do
  token = token + 1
  local ttl, m = ARGV[a], tonumber(ARGV[a + 1])
  a = a + 2
  local allowed = true
  for _ = 1, m do
    local b = tonumber(ARGV[a])
    a = a + 1
    count[b] = count[b] + 1
    if count[b] > limit[b] then
      allowed = false
    end
  end
  if allowed then
    epoch = epoch or string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
    redis.call('SET', KEYS[token], epoch, 'PX', ttl)
  end
end
return out
