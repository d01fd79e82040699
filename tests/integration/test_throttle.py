"""Login throttling per account and client address, under an account-wide ceiling."""

import asyncio

from tests.conftest import login_attempt, register_and_login
from tests.support import wait_for_async

HOME = "127.0.0.1"  # the address of the tests that need only one


async def test_too_many_failures_lock_that_address_out_for_the_window(make_app):
    app = await make_app(login_max_failures=3, login_window=120)
    client = app.test_client()
    await register_and_login(client)
    for _ in range(3):
        r = await login_attempt(client, password="wrong password", ip="10.0.0.1")
        assert r.status_code == 401
    r = await login_attempt(client, password="correct horse", ip="10.0.0.1")
    assert r.status_code == 429
    assert (await r.get_json())["error"] == "too_many_attempts"
    assert 0 < int(r.headers["Retry-After"]) <= 120
    # The owner, elsewhere, is not locked out by someone else's guesses.
    r = await login_attempt(client, password="correct horse", ip="10.0.0.2")
    assert r.status_code == 200
    # ...and that success does not give the guessing address its turns back.
    r = await login_attempt(client, password="correct horse", ip="10.0.0.1")
    assert r.status_code == 429


async def test_the_account_ceiling_counts_guesses_from_every_address(make_app):
    # Two per address, twenty (ten times as many) for the whole account.
    app = await make_app(login_max_failures=2, login_window=120)
    client = app.test_client()
    await register_and_login(client)
    for n in range(10):
        for _ in range(2):
            r = await login_attempt(client, password="wrong password", ip=f"10.0.1.{n}")
            assert r.status_code == 401
    r = await login_attempt(client, password="correct horse", ip="10.0.2.1")
    assert r.status_code == 429 and 0 < int(r.headers["Retry-After"]) <= 120


async def test_an_ipv6_64_counts_as_one_address(make_app):
    app = await make_app(login_max_failures=2)
    client = app.test_client()
    await register_and_login(client)
    for password, ip, status in [
        ("wrong password", "2001:db8:0:7::1", 401),
        ("wrong password", "2001:db8:0:7::2", 401),
        ("correct horse", "2001:db8:0:7:ffff::9", 429),
        ("correct horse", "2001:db8:0:8::1", 200),
    ]:
        r = await login_attempt(client, password=password, ip=ip)
        assert r.status_code == status, ip


async def test_behind_a_trusted_proxy_the_forwarded_client_is_counted(make_app):
    app = await make_app(login_max_failures=2, trusted_proxies=("127.0.0.1",))
    client = app.test_client()
    await register_and_login(client)

    async def via_proxy(password: str, real: str) -> int:
        forwarded = {"X-Forwarded-For": real}
        r = await login_attempt(client, password=password, ip=HOME, headers=forwarded)
        return r.status_code

    assert await via_proxy("wrong password", "198.51.100.1") == 401
    assert await via_proxy("wrong password", "198.51.100.1") == 401
    assert await via_proxy("correct horse", "198.51.100.1") == 429
    # Another client behind the same proxy is not.
    assert await via_proxy("correct horse", "198.51.100.2") == 200


async def test_a_success_resets_the_count(make_app):
    app = await make_app(login_max_failures=3)
    client = app.test_client()
    await register_and_login(client)
    for _ in range(2):
        assert (await login_attempt(client, password="wrong password", ip=HOME)).status_code == 401
    assert (await login_attempt(client, password="correct horse", ip=HOME)).status_code == 200
    for _ in range(2):
        assert (await login_attempt(client, password="wrong password", ip=HOME)).status_code == 401
    assert (await login_attempt(client, password="correct horse", ip=HOME)).status_code == 200


async def test_unknown_accounts_are_throttled_too(make_app):
    app = await make_app(login_max_failures=2)
    client = app.test_client()
    for _ in range(2):
        r = await login_attempt(client, "ghost", "whatever1")
        assert r.status_code == 401
    r = await login_attempt(client, "ghost", "whatever1")
    assert r.status_code == 429


async def test_the_window_ends(make_app, redis_client):
    app = await make_app(login_max_failures=1, login_window=1)
    client = app.test_client()
    await register_and_login(client)
    assert (await login_attempt(client, password="wrong password", ip=HOME)).status_code == 401
    assert (await login_attempt(client, password="correct horse", ip=HOME)).status_code == 429
    # The counter is a Redis key living as long as the window: wait for it to go.
    keys = [k async for k in redis_client.scan_iter("tg:{n*}:fails")]
    assert len(keys) == 1

    async def counter_gone() -> bool:
        return not await redis_client.exists(keys[0])

    await wait_for_async(counter_gone, interval=0.02, what="the failure counter's expiry")
    assert (await login_attempt(client, password="correct horse", ip=HOME)).status_code == 200


async def test_guesses_sent_at_once_meet_the_limit_too(make_app):
    app = await make_app(login_max_failures=3)
    client = app.test_client()
    await register_and_login(client)
    results = await asyncio.gather(
        *(login_attempt(client, password=f"guess {i:04}", ip=HOME) for i in range(40))
    )
    statuses = sorted(r.status_code for r in results)
    assert statuses == [401] * 3 + [429] * 37


async def test_the_current_password_check_is_throttled_too(make_app):
    app = await make_app(login_max_failures=3)
    client = app.test_client()
    pair = await register_and_login(client)
    auth = {"Authorization": f"Bearer {pair['access_token']}"}
    for i in range(3):
        r = await client.post(
            "/auth/password",
            json={"current_password": f"guess {i:04}", "new_password": "battery staple"},
            headers=auth,
        )
        assert r.status_code == 401
    r = await client.post(
        "/auth/password",
        json={"current_password": "correct horse", "new_password": "battery staple"},
        headers=auth,
    )
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0


async def test_correct_passwords_sent_at_once_take_turns_and_all_succeed(make_app, redis_client):
    app = await make_app(login_max_failures=3)
    client = app.test_client()
    await register_and_login(client)
    results = await asyncio.gather(
        *(login_attempt(client, password="correct horse", ip=HOME) for _ in range(20))
    )
    assert [r.status_code for r in results] == [200] * 20
    # Nothing is left behind: no count, no check marked as running.
    assert [k async for k in redis_client.scan_iter("tg:{n*}")] == []


# -- one address across many usernames; registrations; reset requests -----------


async def test_one_address_spraying_many_usernames_is_stopped(make_app):
    app = await make_app(login_window=120)  # TOKENGATE_ADDRESS_MAX_FAILURES: 20
    client = app.test_client()
    await register_and_login(client, ip="10.0.3.1")
    answers = []
    for n in range(30):
        r = await login_attempt(client, f"user{n}", "Summer2026!", ip="10.0.3.66")
        answers.append(r.status_code)
        if r.status_code == 429:
            assert (await r.get_json())["error"] == "too_many_attempts"
            assert 0 < int(r.headers["Retry-After"]) <= 120
    assert answers == [401] * 20 + [429] * 10
    # An account of its own does not give the address its guesses back...
    r = await login_attempt(client, "alice", "correct horse", ip="10.0.3.66")
    assert r.status_code == 429
    # ...and its neighbours in the same IPv6 /64 are one address, others are not.
    assert (await login_attempt(client, "user0", "x", ip="10.0.3.67")).status_code == 401
    assert (await login_attempt(client, ip="10.0.3.1")).status_code == 200


async def test_an_ipv6_64_sprays_as_one_address(make_app):
    app = await make_app(address_max_failures=3)
    client = app.test_client()
    for n in range(3):
        r = await login_attempt(client, f"user{n}", "guess", ip=f"2001:db8:0:9::{n + 1}")
        assert r.status_code == 401
    r = await login_attempt(client, "user9", "guess", ip="2001:db8:0:9:ffff::1")
    assert r.status_code == 429
    r = await login_attempt(client, "user9", "guess", ip="2001:db8:0:a::1")
    assert r.status_code == 401


async def test_an_outage_counts_against_no_address(make_app):
    """Infrastructure errors never count as failed attempts, across usernames either."""
    from quart_tokengate.service.db.engine import build_engine, build_sessionmaker
    from tests.support import free_port

    app = await make_app(address_max_failures=2, login_max_failures=2)
    client = app.test_client()
    await register_and_login(client, ip=HOME)
    users = app.extensions["tokengate"].accounts.users
    good = users.db
    dead = build_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/test")
    users.db = build_sessionmaker(dead)
    try:
        for n in range(4):
            r = await login_attempt(client, f"user{n}", "guess", ip="10.0.4.1")
            assert r.status_code == 503
            r = await login_attempt(client, password="wrong", ip="10.0.4.1")
            assert r.status_code == 503
    finally:
        users.db = good
        await dead.dispose()
    assert (await login_attempt(client, ip="10.0.4.1")).status_code == 200


async def register_from(client, username: str, ip: str, password: str = "correct horse"):
    body = {"username": username, "password": password}
    return await client.post("/auth/register", json=body, scope_base={"client": (ip, 5000)})


async def test_registrations_are_throttled_per_address(make_app):
    app = await make_app(address_max_registrations=3, login_window=300)
    client = app.test_client()
    statuses = [(await register_from(client, f"new{n}", "10.0.5.1")).status_code for n in range(3)]
    assert statuses == [201, 201, 201]
    r = await register_from(client, "new3", "10.0.5.1")
    assert r.status_code == 429 and (await r.get_json())["error"] == "too_many_attempts"
    assert 0 < int(r.headers["Retry-After"]) <= 300
    # Taken names count too (probing them is what the limit is for).
    assert (await register_from(client, "new0", "10.0.5.2")).status_code == 409
    assert (await register_from(client, "new4", "10.0.5.2")).status_code == 201
    # Nothing was created past the limit.
    assert (await login_attempt(client, "new3", ip=HOME)).status_code == 401


async def test_reset_requests_are_throttled_per_address_across_usernames(make_app):
    app = await make_app(address_max_resets=3)
    client = app.test_client()

    async def reset(username: str, ip: str):
        body = {"username": username}
        scope = {"client": (ip, 5000)}
        return await client.post("/auth/password-reset/request", json=body, scope_base=scope)

    for n in range(3):
        assert (await reset(f"name{n}", "10.0.6.1")).status_code == 202
    r = await reset("name3", "10.0.6.1")
    assert r.status_code == 429 and (await r.get_json())["error"] == "too_many_attempts"
    assert int(r.headers["Retry-After"]) > 0
    assert (await reset("name3", "10.0.6.2")).status_code == 202


async def test_register_checks_the_name_before_hashing(make_app):
    from quart_tokengate.service.passwords import Passwords
    from quart_tokengate.service.testing import FAST_HASHER

    class CountingPasswords(Passwords):
        hashed = 0

        async def hash(self, password: str) -> str:
            CountingPasswords.hashed += 1
            return await super().hash(password)

    app = await make_app()
    # The app under test, with a password hasher that counts its calls.
    from quart_tokengate.service import create_app

    gate = app.extensions["tokengate"]
    counted = create_app(gate.settings, passwords=CountingPasswords(FAST_HASHER))
    async with counted.test_app():
        client = counted.test_client()
        assert (await register_from(client, "alice", HOME)).status_code == 201
        assert CountingPasswords.hashed == 1
        for _ in range(3):
            r = await register_from(client, "alice", HOME, password="another password")
            assert r.status_code == 409
        assert CountingPasswords.hashed == 1
