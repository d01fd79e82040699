"""argon2id: off the event loop, one verify for unknown users, rehash on login."""

import asyncio
import os
import threading

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


class AsksTheLoop(PasswordHasher):
    """Hashes and verifies only once the event loop has run a callback asked of it.

    On a thread of its own the callback runs at once. On the loop's thread it
    could not run before the hash returned: the wait would time out, and the
    answer recorded would be False.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loop = None  # set after the constructor's dummy hash
        self.answers = []

    def ask_the_loop(self):
        if self.loop is not None:
            answered = threading.Event()
            self.loop.call_soon_threadsafe(answered.set)
            self.answers.append(answered.wait(timeout=10))

    def hash(self, password, **kwargs):
        self.ask_the_loop()
        return super().hash(password, **kwargs)

    def verify(self, hash, password):
        self.ask_the_loop()
        return super().verify(hash, password)


async def test_hashing_does_not_block_the_event_loop():
    hasher = AsksTheLoop(time_cost=1, memory_cost=1024, parallelism=1)
    passwords = Passwords(hasher)
    hasher.loop = asyncio.get_running_loop()
    stored = await passwords.hash("correct horse")
    assert (await passwords.verify(stored, "correct horse")).ok
    assert not (await passwords.verify(None, "correct horse")).ok  # the unknown user's verify
    # Each time the loop answered while the hashing thread was inside argon2's call.
    assert hasher.answers == [True, True, True]


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
