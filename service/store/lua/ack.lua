-- An instance has dropped what an end announced (store/near.py).
-- KEYS: the end's acknowledgement list. ARGV: instance id, the list's lifetime in ms.
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
