-- The instances that hold a near-check lease, or held one in the last ARGV[1]
-- ms by Redis's clock (store/near.py): a clock that steps forward a little must
-- not hide a live one. KEYS: the lease set. Returns their ids.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local since = string.format('(%.0f', now - tonumber(ARGV[1]))
return redis.call('ZRANGEBYSCORE', KEYS[1], since, '+inf')
