"""A disabled user cannot log in: the same answer, after the same password work, as any failure."""

from __future__ import annotations

from typing import Any

from argon2 import PasswordHasher

from quart_tokengate.service import Settings, create_app
from quart_tokengate.service.admin import set_disabled
from quart_tokengate.service.passwords import Passwords
from tests.conftest import register_and_login
from tests.support import SECRET


class CountingHasher(PasswordHasher):
    """argon2id with cheap parameters that counts the verifications it runs."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.verified: list[str] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.verified.append(hash if isinstance(hash, str) else hash.decode())
        return super().verify(hash, password)


async def test_disabled_login_is_invalid_credentials_after_one_verify(
    redis_client: Any, redis_url: str, database_url: str, tmp_path: Any
) -> None:
    hasher = CountingHasher()
    settings = Settings(
        secret_key=SECRET,
        redis_url=redis_url,
        database_url=database_url,
        instance_dir=tmp_path / "instance",
    )
    app = create_app(settings, passwords=Passwords(hasher))
    async with app.test_app():
        client = app.test_client()
        await register_and_login(client, "erin")
        await client.post("/auth/register", json={"username": "frank", "password": "x" * 12})
        gate = app.extensions["tokengate"]

        async def attempt(username: str, password: str) -> tuple[int, Any, int]:
            before = len(hasher.verified)
            r = await client.post("/auth/login", json={"username": username, "password": password})
            return r.status_code, await r.get_json(), len(hasher.verified) - before

        wrong = await attempt("erin", "wrong password")
        unknown = await attempt("nobody", "correct horse")
        await set_disabled(gate, "erin", True)
        disabled = await attempt("erin", "correct horse")
        assert wrong == unknown == disabled
        assert disabled[0] == 401 and disabled[1]["error"] == "invalid_credentials"
        assert disabled[2] == 1
        # The verification ran against erin's real hash, not a shortcut.
        async with gate.db() as db:
            from quart_tokengate.service.db import repository as repo

            erin = await repo.get_user_by_username(db, "erin")
        assert erin is not None and hasher.verified[-1] == erin.password_hash

        await set_disabled(gate, "erin", False)
        assert (await attempt("erin", "correct horse"))[0] == 200
