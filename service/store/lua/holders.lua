-- The instances that hold a near-check lease, or held one in the last ARGV[1]
-- ms by Redis's clock (store/near.py): a clock that steps forward a little must
-- not hide a live one. KEYS: the lease set. ARGV: that slack in ms, the seconds
-- after a restart for which one more holder is made up. Returns their ids.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local since = string.format('(%.0f', now - tonumber(ARGV[1]))
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], since, '+inf')
-- A Redis up for less than ARGV[2] seconds may have restarted and lost the set
-- (it keeps nothing on disk): an instance whose loop has not yet read that its
-- subscription ended may still answer near on a lease from before. '~restarted'
-- never acknowledges, so the ender waits such a lease out. (INFO refused: auto
-- mode keeps near checks off for such a user, store/near.py.)
local info = redis.pcall('INFO', 'server')
if type(info) == 'string' then
  local up = tonumber(string.match(info, 'uptime_in_seconds:(%d+)'))
  if up ~= nil and up < tonumber(ARGV[2]) then
    table.insert(ids, '~restarted')
  end
end
return ids
