local selection = redis.call('GET', KEYS[1])
if not selection then
  return {0, false}
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 1 then ttl = 1 end
if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ttl) then
  return {2, false}
end
local s = cjson.decode(selection)
local demand = s.network_id
if demand == '' then demand = s.seat end
local sep = ARGV[3]
redis.call('HINCRBY', KEYS[3], s.account_id .. sep .. s.source .. sep .. demand .. sep .. ARGV[1] .. sep .. ARGV[2], 1)
if ARGV[1] == 'impression' and not s.test and s.burl and s.burl ~= ''
    and (s.burl_expires_at_ms or 0) > tonumber(ARGV[6]) then
  local notice = {id = s.id, url = s.burl, attempts = 0, expires_at_ms = s.burl_expires_at_ms}
  redis.call('HSET', KEYS[6], s.id, cjson.encode(notice))
  redis.call('ZADD', KEYS[5], ARGV[6], s.id)
end
if ARGV[1] == 'impression' and s.network_id ~= '' and not s.test then
  local cell = ARGV[4] .. sep .. s.network_id .. sep .. s.bid_id .. sep
  redis.call('HINCRBY', KEYS[4], cell .. 'impressions', 1)
  redis.call('HINCRBY', KEYS[4], cell .. 'estimated_revenue_micros', math.floor(s.price_micros / 1000))
  redis.call('EXPIRE', KEYS[4], ARGV[5])
end
return {1, selection}
