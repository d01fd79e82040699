-- The instances whose near-check lease has not ended (store/near.py).
-- KEYS: the lease set. Returns {Redis's time in ms, id, lease end in ms, ...}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local found = redis.call('ZRANGEBYSCORE', KEYS[1], string.format('(%.0f', now), '+inf', 'WITHSCORES')
table.insert(found, 1, string.format('%.0f', now))
return found
