-- An expired access token's session: is it over, and why? Unlike check.lua
-- it does not slide last-seen (an expired token is not activity); like every
-- session script it ends a session it finds past its idle timeout or age.
-- KEYS: session, user set. ARGV: sid, now, idle, maxage.
-- Returns {'miss'} | {'ended', why, fresh?} | {'ok'}
local now, idle, maxage = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local h, reply = alive(KEYS[1], KEYS[2], ARGV[1], now, idle, maxage)
if not h then return reply end
return {'ok'}
