"""Queries on the durable tables. Every function takes an ``AsyncSession``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .. import usernames
from .models import AuthSession, PurposeTokenRecord, User


def utc(ts: float) -> datetime:
    """An epoch time (what the clock gives) as the aware UTC ``datetime`` SQL stores."""
    return datetime.fromtimestamp(ts, UTC)


async def get_user_by_username(db: AsyncSession, username: str) -> User | None:
    return (await db.execute(select(User).where(User.username == username))).scalar_one_or_none()


async def find_user_by_name(db: AsyncSession, name: str) -> User | None:
    """The user a person means by ``name``: under its UsernameCaseMapped form (``Alice``
    is ``alice``), else under the name as given (kept before that profile applied)."""
    for form in usernames.lookup_forms(name):
        user = await get_user_by_username(db, form)
        if user is not None:
            return user
    return None


async def username_taken(db: AsyncSession, skeleton: str) -> bool:
    """Whether a user's name has this look-alike skeleton."""
    found = await db.execute(select(User.id).where(User.username_skeleton == skeleton))
    return found.first() is not None


async def get_user(db: AsyncSession, user_id: int) -> User | None:
    return await db.get(User, user_id)


async def get_session(db: AsyncSession, sid: str) -> AuthSession | None:
    return await db.get(AuthSession, sid)


async def live_sessions(db: AsyncSession, user_id: int) -> Sequence[AuthSession]:
    query = (
        select(AuthSession)
        .where(AuthSession.user_id == user_id, AuthSession.ended_at.is_(None))
        .order_by(AuthSession.created_at)
    )
    return (await db.execute(query)).scalars().all()


async def end_sessions(
    db: AsyncSession,
    sids: Sequence[str],
    reason: str,
    at: datetime,
) -> None:
    """Mark ``sids`` ended (those not ended already keep their first reason)."""
    if not sids:
        return
    await db.execute(
        update(AuthSession)
        .where(AuthSession.id.in_(list(sids)), AuthSession.ended_at.is_(None))
        .values(ended_at=at, end_reason=reason)
    )


async def resume_sessions(
    db: AsyncSession,
    sids: Sequence[str],
    reason: str,
    at: datetime,
) -> None:
    """Take back :func:`end_sessions` of ``sids`` with ``reason`` at ``at``, and only that."""
    if not sids:
        return
    await db.execute(
        update(AuthSession)
        .where(
            AuthSession.id.in_(list(sids)),
            AuthSession.ended_at == at,
            AuthSession.end_reason == reason,
        )
        .values(ended_at=None, end_reason=None)
    )


async def record_rotation(
    db: AsyncSession,
    sid: str,
    *,
    access_jti: str,
    refresh_jti: str,
    previous_refresh_jti: str,
    iat: int,
    at: datetime,
) -> bool:
    """Move the session's refresh chain one step, if SQL is at ``previous_refresh_jti``.

    Whether SQL holds this rotation now (written here, or already). A row that
    another transaction is writing this very moment is skipped, not waited for
    (PostgreSQL's ``SKIP LOCKED``): fifty concurrent refreshes of one token do
    not queue on one row lock. The call answers ``False`` then; the caller
    may ask again.
    """
    behind = (
        select(AuthSession.id)
        .where(AuthSession.id == sid, AuthSession.refresh_jti == previous_refresh_jti)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    result = await db.execute(
        update(AuthSession)
        .where(AuthSession.id == behind)
        .values(
            access_jti=access_jti,
            refresh_jti=refresh_jti,
            previous_refresh_jti=previous_refresh_jti,
            iat=iat,
            last_seen_at=at,
        )
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) == 1:
        return True
    held = await db.scalar(select(AuthSession.refresh_jti).where(AuthSession.id == sid))
    return held == refresh_jti


async def touch_session(db: AsyncSession, sid: str, at: datetime) -> None:
    await db.execute(
        update(AuthSession)
        .where(AuthSession.id == sid, AuthSession.last_seen_at < at)
        .values(last_seen_at=at)
    )


async def consume_purpose_token(
    db: AsyncSession, jti: str, purpose: str, at: datetime
) -> int | None:
    """Mark the token used, once; return its user id, or None if it cannot be used."""
    result = await db.execute(
        update(PurposeTokenRecord)
        .where(
            PurposeTokenRecord.jti == jti,
            PurposeTokenRecord.purpose == purpose,
            PurposeTokenRecord.used_at.is_(None),
            PurposeTokenRecord.expires_at > at,
        )
        .values(used_at=at)
        .returning(PurposeTokenRecord.user_id)
    )
    return result.scalar_one_or_none()


async def prune_purpose_tokens(db: AsyncSession, at: datetime) -> None:
    """Forget purpose tokens that have expired (used or not)."""
    await db.execute(delete(PurposeTokenRecord).where(PurposeTokenRecord.expires_at <= at))


async def purpose_token_usable(
    db: AsyncSession, jti: str, purpose: str, at: datetime
) -> int | None:
    """The user id of an unused, unexpired purpose token, without using it."""
    query = select(PurposeTokenRecord.user_id).where(
        PurposeTokenRecord.jti == jti,
        PurposeTokenRecord.purpose == purpose,
        PurposeTokenRecord.used_at.is_(None),
        PurposeTokenRecord.expires_at > at,
    )
    return (await db.execute(query)).scalar_one_or_none()
