"""Account administration behind ``tokengate users ...`` and ``tokengate sessions ...``.

Each function works on a started ``TokenGate`` and goes through the same code
as the HTTP API: ending sessions is the session manager's (SQL first, then
Redis), clearing a login throttle is the store's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from . import usernames
from .app import TokenGate
from .db import repository as repo
from .db.models import AuthSession, User
from .identity import Identity, SessionInfo

# RFC 6749 section 3.3: a scope token is printable ASCII without space, '"' or '\'.
_SCOPE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,200}$")


class AdminError(Exception):
    """A command that cannot be carried out; the message says why, in one line."""


@dataclass(frozen=True, slots=True)
class UserInfo:
    id: int
    username: str
    disabled: bool
    scopes: tuple[str, ...]
    created_at: datetime
    live_sessions: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.username,
            "disabled": self.disabled,
            "scopes": list(self.scopes),
            "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
            "live_sessions": self.live_sessions,
        }


def split_scopes(raw: str) -> tuple[str, ...]:
    return tuple(raw.split())


async def _user(gate: TokenGate, username: str) -> User:
    async with gate.db() as db:
        user = await repo.find_user_by_name(db, username)
    if user is None:
        raise AdminError(f"no such user: {username}")
    return user


async def list_users(gate: TokenGate) -> list[UserInfo]:
    """Every user, by id, with the number of sessions SQL holds as live."""
    live = (
        select(AuthSession.user_id, func.count().label("n"))
        .where(AuthSession.ended_at.is_(None))
        .group_by(AuthSession.user_id)
        .subquery()
    )
    query = (
        select(User, func.coalesce(live.c.n, 0))
        .outerjoin(live, live.c.user_id == User.id)
        .order_by(User.id)
    )
    async with gate.db() as db:
        rows = (await db.execute(query)).all()
    return [
        UserInfo(
            id=user.id,
            username=user.username,
            disabled=user.disabled,
            scopes=split_scopes(user.scopes),
            created_at=user.created_at,
            live_sessions=int(count),
        )
        for user, count in rows
    ]


async def set_password(gate: TokenGate, username: str, password: str) -> None:
    """Set ``username``'s password; every session of the user ends."""
    user = await _user(gate, username)
    await gate.accounts.set_password(user.id, password)


async def set_disabled(gate: TokenGate, username: str, disabled: bool) -> None:
    """Disable (every session ends, logins fail) or enable ``username``."""
    user = await _user(gate, username)
    async with gate.db() as db:
        stored = await repo.get_user(db, user.id)
        assert stored is not None
        stored.disabled = disabled
        await db.commit()
    if disabled:
        # After the flag: a login checked before it is refused when it opens
        # its session (the session manager reads the flag again there).
        await gate.manager.end_all(user.id)
    # The user's API keys are rebuilt from SQL, flag and all, on their next use.
    await gate.user_changed(user.id)


async def unlock(gate: TokenGate, username: str) -> None:
    """Clear the login throttle of ``username``: it may try passwords again at once."""
    user = await _user(gate, username)
    # The throttle counts under the name's canonical form (and a name kept before
    # the username profile applied, under itself).
    for name in {usernames.lookup_forms(username)[0], user.username}:
        await gate.accounts.store.clear_throttle(name)


async def change_scopes(
    gate: TokenGate, username: str, scopes: Sequence[str], *, grant: bool
) -> tuple[str, ...]:
    """Add (``grant``) or remove scopes of ``username``; return the user's scopes now."""
    for scope in scopes:
        if not _SCOPE.match(scope):
            raise AdminError(f"not a valid scope: {scope!r}")
    user = await _user(gate, username)
    async with gate.db() as db:
        stored = await repo.get_user(db, user.id)
        assert stored is not None
        current = list(split_scopes(stored.scopes))
        if grant:
            current += [scope for scope in dict.fromkeys(scopes) if scope not in current]
        else:
            current = [scope for scope in current if scope not in scopes]
        stored.scopes = " ".join(current)
        await db.commit()
    # A key never carries a scope its user has lost: its state is rebuilt.
    await gate.user_changed(user.id)
    return tuple(current)


async def user_id_of(gate: TokenGate, username: str) -> int:
    """The id of ``username``, or ``AdminError``."""
    return (await _user(gate, username)).id


def _identity(user: User, session_id: str = "") -> Identity:
    return Identity(user.id, user.username, session_id, claims={})


async def list_sessions(gate: TokenGate, username: str) -> list[SessionInfo]:
    """``username``'s live sessions, as ``GET /auth/sessions`` lists them."""
    user = await _user(gate, username)
    return await gate.manager.sessions(_identity(user))


async def end_session(gate: TokenGate, session_id: str) -> bool:
    """End one session, whoever's it is; ``False`` if it had ended already."""
    async with gate.db() as db:
        row = await repo.get_session(db, session_id)
        user = await repo.get_user(db, row.user_id) if row is not None else None
    if row is None or user is None:
        raise AdminError(f"no such session: {session_id}")
    if row.ended_at is not None:
        return False
    await gate.manager.end_session(_identity(user), session_id)
    return True
