-- Delete every key matching ARGV[1] (one reset family), in one script: nothing interleaves.
-- SCAN inside a script is allowed on standalone Redis and a Sentinel master (not on a cluster,
-- where the store scans each shard instead). Returns how many keys went.
local cursor = "0"
local gone = 0
repeat
  local reply = redis.call("SCAN", cursor, "MATCH", ARGV[1], "COUNT", 1000)
  cursor = reply[1]
  local keys = reply[2]
  for i = 1, #keys, 500 do
    gone = gone + redis.call("UNLINK", unpack(keys, i, math.min(i + 499, #keys)))
  end
until cursor == "0"
return gone
