local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= current then
  return {0, current}
end
redis.call('SET', KEYS[1], ARGV[2])
local version = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[3], version)
return {1, version}
