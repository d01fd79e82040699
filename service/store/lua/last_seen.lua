-- Which of a user's sessions are alive, and when each was last seen: the
-- sessions list. Read-only; the same rule (`expired`) as every other script,
-- applied to SQL's times for a session Redis has lost.
-- KEYS: the session keys. ARGV: now, idle, maxage, then for each key the
--       created and last-seen times SQL holds.
-- Returns, for each key in order, its last-seen time if alive, else false.
local now, idle, maxage = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for i, k in ipairs(KEYS) do
  local h = hget(k, 'st', 'cr', 'ls')
  if h.st == false then
    h = {st = 'live', cr = ARGV[2 + 2 * i], ls = ARGV[3 + 2 * i]}
  end
  if h.st == 'live' and not expired(h, now, idle, maxage) then
    out[i] = h.ls
  else
    out[i] = false
  end
end
return out
