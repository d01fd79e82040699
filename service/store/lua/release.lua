-- An instance that stops answering near gives its lease back (store/near.py).
-- KEYS: the lease set. ARGV: instance id.
return redis.call('ZREM', KEYS[1], ARGV[1])
