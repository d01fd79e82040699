"""Where users come from: the ``UserStore`` protocol and the default store.

tokengate keeps the sessions; the users may live anywhere. An application
with its own users table passes ``TokenGate(app, user_store=...)`` an object
that looks users up by username and by id and checks a password (or hands
the check to whatever the application uses). The default store is
tokengate's own ``users`` table, with argon2id hashes.

With a store of the application's, the users are the application's to
create and to change: ``/auth/register``, ``/auth/password`` and the password
reset answer ``403``/``404``, and the application calls
``TokenGate.end_sessions(user_id)`` when it changes a password or disables
a user.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from . import tokens
from .db import repository as repo
from .db.models import User
from .passwords import Passwords

log = logging.getLogger("tokengate")


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A user as tokengate needs to know one.

    ``id`` is a positive integer (the ``sub`` claim, as a string); ``scopes``
    go into access tokens; a ``disabled`` user cannot log in or refresh.
    ``password_stamp`` changes whenever the password does (a hash, a version
    number): a login checked against the old password while it changed is
    refused. ``data`` is the application's own object for the user, for the
    claims hook.
    """

    id: int
    username: str
    scopes: frozenset[str] = frozenset()
    disabled: bool = False
    password_stamp: str = field(default="", repr=False)
    data: Any = field(default=None, repr=False, compare=False)


@runtime_checkable
class UserStore(Protocol):
    """What tokengate asks of a place that keeps users."""

    async def get_by_username(self, username: str) -> UserRecord | None:
        """The user with this username, or ``None``."""
        ...

    async def get_by_id(self, user_id: int) -> UserRecord | None:
        """The user with this id, or ``None`` (a deleted user's sessions end)."""
        ...

    async def verify_password(self, user: UserRecord, password: str) -> bool:
        """Whether ``password`` is ``user``'s. Run slow hashes off the event loop."""
        ...


def scope_set(scopes: str | Iterable[str] | None) -> frozenset[str]:
    """Scopes as a set, from a space-separated string or any iterable."""
    if not scopes:
        return frozenset()
    if isinstance(scopes, str):
        return frozenset(scopes.split())
    return frozenset(s for s in scopes if s)


# The kind of a service account's user row, and the stamp that no password matches.
SERVICE_KIND = "service"
NO_PASSWORD = "!"  # noqa: S105 (no hash: matches no password)


def record_of(user: User) -> UserRecord:
    return UserRecord(
        id=user.id,
        username=user.username,
        scopes=scope_set(user.scopes),
        disabled=bool(user.disabled),
        # A service account never logs in with a password, whatever its row
        # holds (a reset or set-password on it): no hash is ever handed over.
        password_stamp=user.password_hash if user.kind != SERVICE_KIND else NO_PASSWORD,
        data=user,
    )


class SqlUserStore:
    """The default store: tokengate's own ``users`` table, argon2id hashes."""

    def __init__(self, db: async_sessionmaker[AsyncSession], passwords: Passwords) -> None:
        self.db = db
        self.passwords = passwords

    async def get_by_username(self, username: str) -> UserRecord | None:
        async with self.db() as db:
            user = await repo.find_user_by_name(db, username)
        return record_of(user) if user is not None else None

    async def get_by_id(self, user_id: int) -> UserRecord | None:
        async with self.db() as db:
            user = await repo.get_user(db, user_id)
        return record_of(user) if user is not None else None

    async def verify_password(self, user: UserRecord, password: str) -> bool:
        verdict = await self.passwords.verify(user.password_stamp, password)
        if verdict.ok and verdict.rehash is not None:
            # Stronger parameters than the stored hash: upgrade it, unless the
            # password changed meanwhile.
            async with self.db() as db:
                stored = await repo.get_user(db, user.id)
                if stored is not None and stored.password_hash == user.password_stamp:
                    stored.password_hash = verdict.rehash
                    await db.commit()
        return verdict.ok


ClaimsHook = Callable[[UserRecord], Mapping[str, Any] | Awaitable[Mapping[str, Any]]]


async def hook_claims(hook: ClaimsHook | None, user: UserRecord) -> dict[str, Any]:
    """The application's claims for ``user``, less any registered claim it tried to set."""
    if hook is None:
        return {}
    found = hook(user)
    if inspect.isawaitable(found):
        found = await found
    if not isinstance(found, Mapping):
        raise TypeError("the claims hook must return a mapping of claim names to values")
    claims = {str(k): v for k, v in found.items()}
    refused = sorted(set(claims) & tokens.REGISTERED_CLAIMS)
    if refused:
        log.warning("the claims hook cannot set registered claims; ignored: %s", refused)
    return {k: v for k, v in claims.items() if k not in tokens.REGISTERED_CLAIMS}
