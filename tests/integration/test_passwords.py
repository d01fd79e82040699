"""argon2id: off the event loop, one verify for unknown users, rehash on login."""

import asyncio
import os
import threading
import time

from argon2 import PasswordHasher
from sqlalchemy import select

from quart_tokengate.service.db.models import User
from quart_tokengate.service.passwords import HASHING_NICE, Passwords
from tests.conftest import register_and_login

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


class CountingHasher(PasswordHasher):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.verified = 0

    def verify(self, hash, password):
        self.verified += 1
        return super().verify(hash, password)


async def test_hashing_does_not_block_the_event_loop():
    passwords = Passwords(PasswordHasher(time_cost=3, memory_cost=65536, parallelism=1))
    ticks = 0
    stop = False

    async def ticker():
        nonlocal ticks
        while not stop:
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    start = time.monotonic()
    stored = await passwords.hash("correct horse")
    assert (await passwords.verify(stored, "correct horse")).ok
    elapsed = time.monotonic() - start
    stop = True
    await task
    # The loop kept ticking through the work: at least a third of the ticks it
    # could have made had the hashing been elsewhere.
    assert ticks >= (elapsed / 0.005) / 3, (ticks, elapsed)


async def test_unknown_user_costs_one_verify_like_a_known_one():
    hasher = CountingHasher(time_cost=1, memory_cost=1024, parallelism=1)
    passwords = Passwords(hasher)
    stored = await passwords.hash("correct horse")
    assert not (await passwords.verify(stored, "wrong")).ok
    assert hasher.verified == 1
    assert not (await passwords.verify(None, "wrong")).ok
    assert hasher.verified == 2
    assert not (await passwords.verify(None, "tokengate: no such user")).ok


async def test_old_parameters_are_upgraded_at_the_next_login(app):
    client = app.test_client()
    await register_and_login(client)
    gate = app.extensions["tokengate"]
    old = PasswordHasher(time_cost=1, memory_cost=512, parallelism=1).hash("correct horse")
    async with gate.db() as db:
        user = (await db.execute(select(User))).scalar_one()
        user.password_hash = old
        await db.commit()
    r = await client.post("/auth/login", json={"username": "alice", "password": "correct horse"})
    assert r.status_code == 200
    async with gate.db() as db:
        user = (await db.execute(select(User))).scalar_one()
    assert user.password_hash != old
    assert user.password_hash.startswith("$argon2id$")
    assert not gate.accounts.passwords.hasher.check_needs_rehash(user.password_hash)
    r = await client.post("/auth/login", json={"username": "alice", "password": "correct horse"})
    assert r.status_code == 200


async def test_stored_hashes_are_argon2id(app):
    client = app.test_client()
    await register_and_login(client)
    async with app.extensions["tokengate"].db() as db:
        user = (await db.execute(select(User))).scalar_one()
    assert user.password_hash.startswith("$argon2id$")


async def test_hashing_runs_on_its_own_threads_at_a_lower_priority():
    seen = []

    class Recording(PasswordHasher):
        def hash(self, password, **kwargs):
            # On Linux, "process 0" is the calling thread.
            seen.append((threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, 0)))
            return super().hash(password, **kwargs)

    passwords = Passwords(Recording(time_cost=1, memory_cost=1024, parallelism=1), threads=1)
    seen.clear()  # the dummy hash made at construction ran on the caller's thread
    await asyncio.gather(*(passwords.hash(f"password {i}") for i in range(4)))
    # One thread (of cores - 1), running at nice +10 while the loop stays at its own.
    assert {name for name, _ in seen} == {"tokengate-argon2_0"}
    assert {nice for _, nice in seen} == {os.getpriority(os.PRIO_PROCESS, 0) + HASHING_NICE}


def test_hashing_leaves_one_core_to_the_event_loop():
    assert Passwords(FAST).threads == max(1, (os.cpu_count() or 1) - 1)
