local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local claimed = {}
for _, id in ipairs(ids) do
  local notice = redis.call('HGET', KEYS[2], id)
  if notice then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    table.insert(claimed, notice)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return claimed
