"""An app that keeps its own users table: tokengate checks passwords against it and
keeps the sessions.

The app's ``accounts`` table has its own columns (an e-mail address for a
username, roles, an ``active`` flag, a tenant) and its own password scheme
(scrypt, from the standard library). ``AccountStore`` implements tokengate's
``UserStore`` protocol over it; ``account_claims`` puts the tenant in every
access token. Run it with::

    export TOKENGATE_SECRET_KEY=$(python -c 'import secrets; print(secrets.token_urlsafe(48))')
    export ACCOUNTS_DATABASE_URL=sqlite+aiosqlite:///accounts.db
    python examples/own_users.py add alice@example.com "correct horse" --roles reports:write
    python examples/own_users.py serve

then ``POST /auth/login`` with ``{"username": "alice@example.com", ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import os
import secrets
from typing import Any

from quart import Quart
from sqlalchemy import Boolean, Integer, String, select
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from quart_tokengate.service import TokenGate, UserRecord, current_identity, login_required
from quart_tokengate.service.users import scope_set


class Base(DeclarativeBase):
    pass


class Account(Base):
    """The application's own user model; tokengate never writes to it."""

    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    roles: Mapped[str] = mapped_column(String(500), default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    tenant: Mapped[str] = mapped_column(String(100), default="default")


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    return f"scrypt${salt.hex()}${digest.hex()}"


def check_password(stored: str, password: str) -> bool:
    try:
        scheme, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    found = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=2**14, r=8, p=1)
    return hmac.compare_digest(found.hex(), digest)


class AccountStore:
    """tokengate's ``UserStore`` over the ``accounts`` table."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.engine: AsyncEngine | None = None
        self.sessions: async_sessionmaker[AsyncSession] | None = None

    async def start(self) -> None:
        self.engine = create_async_engine(self.database_url)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        async with self.engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)

    async def stop(self) -> None:
        if self.engine is not None:
            await self.engine.dispose()

    def _db(self) -> AsyncSession:
        assert self.sessions is not None, "AccountStore.start() has not run"
        return self.sessions()

    @staticmethod
    def record(account: Account) -> UserRecord:
        return UserRecord(
            id=account.id,
            username=account.email,
            scopes=scope_set(account.roles),
            disabled=not account.active,
            password_stamp=account.password_hash,
            data=account,
        )

    async def get_by_username(self, username: str) -> UserRecord | None:
        async with self._db() as db:
            query = select(Account).where(Account.email == username)
            account = (await db.execute(query)).scalar_one_or_none()
        return self.record(account) if account else None

    async def get_by_id(self, user_id: int) -> UserRecord | None:
        async with self._db() as db:
            account = await db.get(Account, user_id)
        return self.record(account) if account else None

    async def verify_password(self, user: UserRecord, password: str) -> bool:
        # scrypt is slow on purpose: off the event loop.
        return await asyncio.to_thread(check_password, user.password_stamp, password)

    # The application's own account management (tokengate does none of it).
    async def add(
        self, email: str, password: str, roles: str = "", tenant: str = "default"
    ) -> Account:
        account = Account(
            email=email, password_hash=hash_password(password), roles=roles, tenant=tenant
        )
        async with self._db() as db:
            db.add(account)
            await db.commit()
        return account

    async def update(self, account_id: int, **values: Any) -> None:
        if "password" in values:
            values["password_hash"] = hash_password(values.pop("password"))
        async with self._db() as db:
            account = await db.get(Account, account_id)
            assert account is not None
            for name, value in values.items():
                setattr(account, name, value)
            await db.commit()


def account_claims(user: UserRecord) -> dict[str, Any]:
    """The claims hook: every access token says which tenant its user belongs to."""
    account: Account = user.data
    return {"tenant": account.tenant}


def create_app(database_url: str | None = None, **gate_options: Any) -> Quart:
    """The app: its own accounts, tokengate's routes, guard and sessions."""
    app = Quart(__name__)
    store = AccountStore(database_url or os.environ["ACCOUNTS_DATABASE_URL"])
    app.before_serving(store.start)
    app.after_serving(store.stop)
    gate = TokenGate(app, user_store=store, claims=account_claims, **gate_options)
    app.extensions["accounts"] = store

    @app.get("/whoami")
    @login_required
    async def whoami() -> dict[str, Any]:
        me = current_identity()
        return {"email": me.username, "tenant": me.claims["tenant"], "scopes": sorted(me.scopes)}

    @app.post("/reports")
    @login_required(scopes=["reports:write"])
    async def write_report() -> tuple[dict[str, str], int]:
        return {"tenant": current_identity().claims["tenant"]}, 201

    @app.post("/accounts/<int:account_id>/deactivate")
    @login_required(scopes=["admin"], fresh=True)
    async def deactivate(account_id: int) -> tuple[str, int]:
        await store.update(account_id, active=False)
        await gate.end_sessions(account_id)  # its tokens stop working at once
        return "", 204

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add")
    add.add_argument("email")
    add.add_argument("password")
    add.add_argument("--roles", default="")
    add.add_argument("--tenant", default="default")
    serve = sub.add_parser("serve")
    serve.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    if args.command == "add":
        store = AccountStore(os.environ["ACCOUNTS_DATABASE_URL"])

        async def add_account() -> None:
            await store.start()
            try:
                await store.add(args.email, args.password, args.roles, args.tenant)
            finally:
                await store.stop()

        asyncio.run(add_account())
    else:
        create_app().run(port=args.port)


if __name__ == "__main__":
    main()
