-- Counting a credential's guarded requests (TOKENGATE_RATE_LIMIT, N/S): put in
-- front of the scripts that check a credential (check, api_key). A fixed
-- window of `window` seconds opens with the first request it counts; at most
-- `limit` requests are counted in it, the rest refused until it closes.
-- Counter hash fields: s when the window opened (the caller's clock, as sent),
-- n requests counted in it.
-- Returns true, remaining, seconds to the window's end; or false, retry-after.
local function rate(rk, now, nowtext, limit, window)
  local r = redis.call('HMGET', rk, 's', 'n')
  local start, n = tonumber(r[1]), tonumber(r[2])
  if start == nil or now >= start + window then
    start, n = now, 0
    redis.call('HSET', rk, 's', nowtext)
    redis.call('EXPIRE', rk, window + 1)
  end
  -- Whole seconds, rounded up; a rounding error of the sum is not a second. Never
  -- more than the window: another instance's clock, a little behind the one that
  -- opened it, would otherwise add a second.
  local left = math.min(window, math.max(1, math.ceil(start + window - now - 1e-6)))
  if n >= limit then return false, left end
  redis.call('HSET', rk, 'n', n + 1)
  return true, limit - n - 1, left
end
