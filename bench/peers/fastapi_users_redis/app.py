"""A peer: fastapi-users with its RedisStrategy and the SQLAlchemy async user database.

Set up as fastapi-users' documentation shows it (``BearerTransport`` +
``RedisStrategy``, ``SQLAlchemyUserDatabase`` on SQLite through aiosqlite),
served by uvicorn (``uvicorn[standard]``: uvloop, httptools) from
``bench/peers/fastapi_users_redis/.venv``; never imported by tokengate. Every
protected request reads the token's key in Redis (``GET
fastapi_users_token:<token>``: revocation is the key's deletion, seen on the
next request) and then the user's row in SQLite (``current_user(active=True)``).

    GET  /protected            the auth-only route: the user's id and email
    GET  /io                   protected, then awaits 50 ms (an upstream call)
    POST /auth/register        fastapi-users' register router
    POST /auth/redis/login     fastapi-users' login router (form: username, password)

``python app.py`` creates the tables (the bench runs it once before the
workers start, so that two workers never race to create them).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncGenerator
from typing import Annotated, Any

import redis.asyncio
from fastapi import Depends, FastAPI
from fastapi_users import BaseUserManager, FastAPIUsers, UUIDIDMixin, schemas
from fastapi_users.authentication import AuthenticationBackend, BearerTransport, RedisStrategy
from fastapi_users_db_sqlalchemy import SQLAlchemyBaseUserTableUUID, SQLAlchemyUserDatabase
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

SECRET = os.environ["PEER_SECRET_KEY"]
engine = create_async_engine("sqlite+aiosqlite:///" + os.environ["PEER_DB"])
async_session_maker = async_sessionmaker(engine, expire_on_commit=False)
redis_client = redis.asyncio.from_url(os.environ["PEER_REDIS_URL"], decode_responses=True)


class Base(DeclarativeBase):
    pass


class User(SQLAlchemyBaseUserTableUUID, Base):
    pass


class UserRead(schemas.BaseUser[uuid.UUID]):
    pass


class UserCreate(schemas.BaseUserCreate):
    pass


async def create_db_and_tables() -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)


async def get_async_session() -> AsyncGenerator[AsyncSession, None]:
    async with async_session_maker() as session:
        yield session


async def get_user_db(
    session: Annotated[AsyncSession, Depends(get_async_session)],
) -> AsyncGenerator[SQLAlchemyUserDatabase[User, uuid.UUID], None]:
    yield SQLAlchemyUserDatabase(session, User)


class UserManager(UUIDIDMixin, BaseUserManager[User, uuid.UUID]):
    reset_password_token_secret = SECRET
    verification_token_secret = SECRET


async def get_user_manager(
    user_db: Annotated[SQLAlchemyUserDatabase[User, uuid.UUID], Depends(get_user_db)],
) -> AsyncGenerator[UserManager, None]:
    yield UserManager(user_db)


def get_redis_strategy() -> RedisStrategy[User, uuid.UUID]:
    return RedisStrategy(redis_client, lifetime_seconds=3600)


auth_backend = AuthenticationBackend(
    name="redis",
    transport=BearerTransport(tokenUrl="auth/redis/login"),
    get_strategy=get_redis_strategy,
)
fastapi_users = FastAPIUsers[User, uuid.UUID](get_user_manager, [auth_backend])
current_active_user = fastapi_users.current_user(active=True)

app = FastAPI()
app.include_router(fastapi_users.get_auth_router(auth_backend), prefix="/auth/redis")
app.include_router(fastapi_users.get_register_router(UserRead, UserCreate), prefix="/auth")


@app.get("/protected")
async def protected(user: Annotated[User, Depends(current_active_user)]) -> dict[str, Any]:
    return {"id": str(user.id), "email": user.email}


@app.get("/io")
async def io(user: Annotated[User, Depends(current_active_user)]) -> dict[str, Any]:
    await asyncio.sleep(0.05)
    return {"id": str(user.id), "waited_ms": 50}


if __name__ == "__main__":
    asyncio.run(create_db_and_tables())
