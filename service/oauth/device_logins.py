"""Device logins (RFC 8628): the codes' state in SQL, their confirmation and the session.

SQL is the truth: a code survives the restart of any instance and every
instance sees it. Each change of state is one conditional UPDATE, so races
settle in the database: of two pages approving one code, one wins; of two
polls after the approval, one moves the code to ``used`` and opens the
session, the other is ``invalid_grant``. The session is opened at that poll,
through ``SessionManager.start_session``, like any login; if that fails (an
outage), the code goes back to ``approved`` and the same poll succeeds later.

Wrong user codes typed on the confirmation page are counted per account and
per client address (``throttle_address``) in Redis, with the password
throttle's window and limit (``TOKENGATE_LOGIN_WINDOW``,
``TOKENGATE_LOGIN_MAX_FAILURES``); past the limit, every lookup, right or
wrong, is ``429`` until the window ends. See docs/device-login.md.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from ..db.models import DeviceCode
from ..db.repository import utc
from ..errors import (
    AccessDenied,
    AuthorizationPending,
    ExpiredToken,
    InsufficientScope,
    InvalidGrant,
    NotFound,
    SlowDown,
    TooManyAttempts,
    Unauthorized,
    describe,
)
from ..identity import ClientInfo
from ..logs import security_event
from ..proxies import throttle_address
from ..sessions import SessionManager
from ..tokens import TokenPair
from ..users import UserRecord
from . import device_codes

log = logging.getLogger("tokengate")

PENDING, APPROVED, DENIED, USED = "pending", "approved", "denied", "used"
# RFC 8628 section 3.5: each slow_down adds 5 seconds to the interval.
SLOW_DOWN_STEP = 5
# Rows are kept this long past their expiry, so that a late poll with a used or
# expired code still meets its own answer; then they are pruned.
KEEP_AFTER_EXPIRY = 3600
DEVICE_LABEL = "device login"
# A poll this much before the interval is up still counts as on time: two
# arrivals are never spaced exactly as the device slept (network jitter).
POLL_TOLERANCE = 0.1
THROTTLE_KIND = "device"
START_KIND = "device-start"
# Codes one address may ask for in TOKENGATE_LOGIN_WINDOW, as a multiple of
# TOKENGATE_LOGIN_MAX_FAILURES (100 by default): plenty for scripts, and it bounds
# the pending codes (and so a guess's odds) that one address can put up.
START_CEILING = 10


@dataclass(frozen=True, slots=True)
class Started:
    """What ``POST /oauth/device_authorization`` hands the device."""

    device_code: str
    user_code: str
    expires_in: int
    interval: int


@dataclass(frozen=True, slots=True)
class DeviceRequest:
    """A pending code, as the confirmation page shows it."""

    user_code: str
    device: str | None
    ip: str | None
    user_agent: str | None
    client_id: str | None
    scopes: tuple[str, ...]
    requested_at: float
    expires_at: float


def session_device(device: str | None) -> str:
    """The device name a device login's session is listed with: marked ``device login``."""
    return f"{device} ({DEVICE_LABEL})"[:200] if device else DEVICE_LABEL


class DeviceLogins:
    """Start, poll, look up and decide device logins, over one session manager."""

    def __init__(self, manager: SessionManager) -> None:
        self.manager = manager

    # -- the device ---------------------------------------------------------
    async def start(
        self, *, client_id: str | None, scopes: tuple[str, ...], info: ClientInfo
    ) -> Started:
        """Make a new pair of codes for a device (RFC 8628 section 3.2)."""
        m, s = self.manager, self.manager.settings
        where = f"address:{throttle_address(info.ip or '')}"
        count, ttl = await m.store.record_failure(where, s.login_window, kind=START_KIND)
        if count > s.login_max_failures * START_CEILING:
            raise TooManyAttempts(ttl if ttl > 0 else s.login_window)
        now = m.clock()
        device_code = device_codes.new_device_code()
        code_hash = device_codes.hash_device_code(device_code)
        assert code_hash is not None
        async with m.db() as db:
            await db.execute(
                delete(DeviceCode).where(DeviceCode.expires_at < utc(now - KEEP_AFTER_EXPIRY))
            )
            await db.commit()
        for _ in range(5):  # a clash of user codes is rare (2.56e10 of them): draw again
            user_code = device_codes.new_user_code()
            row = DeviceCode(
                code_hash=code_hash, user_code=user_code, client_id=client_id,
                scope=" ".join(scopes), device=info.device, ip=info.ip,
                user_agent=info.user_agent, created_at=utc(now),
                expires_at=utc(now + s.device_code_ttl), interval=s.device_poll_interval,
                status=PENDING,
            )  # fmt: skip
            async with m.db() as db:
                db.add(row)
                try:
                    await db.commit()
                except IntegrityError:
                    continue
            return Started(device_code, user_code, s.device_code_ttl, s.device_poll_interval)
        raise RuntimeError("could not draw a free user code")

    async def poll(
        self, device_code: str, client_id: str | None, *, jkt: str | None = None
    ) -> tuple[TokenPair, str]:
        """Answer one poll of the token endpoint (RFC 8628 sections 3.4 and 3.5): the
        session's pair and the scopes its access token carries, or the error to send.
        ``jkt``: the DPoP key of the poll's proof, which the session is bound to."""
        m = self.manager
        now = m.clock()
        code_hash = device_codes.hash_device_code(device_code)
        if code_hash is None:
            raise InvalidGrant("The device code is malformed.")
        async with m.db() as db:
            row = await db.get(DeviceCode, code_hash)
        if row is None or row.client_id != client_id:
            raise InvalidGrant("The device code is unknown, or was issued to another client.")
        if row.status == USED:
            raise InvalidGrant("The device code was used already.")
        if now >= row.expires_at.timestamp():
            raise ExpiredToken()
        if row.status == DENIED:
            raise AccessDenied()
        if row.status == PENDING:
            await self._pending(row, now)
        return await self._issue(row, now, jkt)

    async def _pending(self, row: DeviceCode, now: float) -> None:
        """Note the poll; ``slow_down`` (and 5 s more) if it came early, else pending."""
        early = (
            row.last_polled_at is not None
            and now - row.last_polled_at.timestamp() + POLL_TOLERANCE < row.interval
        )
        values: dict[str, object] = {"last_polled_at": utc(now)}
        if early:
            values["interval"] = DeviceCode.interval + SLOW_DOWN_STEP
        async with self.manager.db() as db:
            await db.execute(
                update(DeviceCode).where(DeviceCode.code_hash == row.code_hash).values(**values)
            )
            await db.commit()
        if early:
            raise SlowDown(
                f"Polling too fast: wait at least {row.interval + SLOW_DOWN_STEP} seconds "
                "between requests."
            )
        raise AuthorizationPending()

    async def _issue(
        self, row: DeviceCode, now: float, jkt: str | None = None
    ) -> tuple[TokenPair, str]:
        """Claim an approved code (once, whatever races) and open its session."""
        m = self.manager
        async with m.db() as db:
            claimed = await db.execute(
                update(DeviceCode)
                .where(DeviceCode.code_hash == row.code_hash, DeviceCode.status == APPROVED)
                .values(status=USED)
            )
            await db.commit()
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            raise InvalidGrant("The device code was used already.")
        try:
            user = await m.users.get_by_id(row.user_id) if row.user_id is not None else None
            if user is None or user.disabled:
                raise InvalidGrant("The account that approved this code is gone or disabled.")
            info = ClientInfo(session_device(row.device), row.ip, row.user_agent)
            try:
                pair = await m.start_session(user, info, jkt=jkt)
            except Unauthorized:
                raise InvalidGrant("The account that approved this code cannot log in.") from None
        except InvalidGrant:
            raise
        except BaseException:
            # An outage: nothing was handed out, so the same poll may come again.
            # If the database is the thing that is down, the code is put back in the
            # background once it answers again.
            try:
                await self._unclaim(row.code_hash)
            except Exception as exc:
                log.warning("could not put a device code back (%s); retrying", describe(exc))
                m.background.retry(lambda: self._unclaim(row.code_hash))
            raise
        try:  # for the record only: the pair goes to the device whatever happens here
            async with m.db() as db:
                await db.execute(
                    update(DeviceCode)
                    .where(DeviceCode.code_hash == row.code_hash)
                    .values(session_id=pair.session_id)
                )
                await db.commit()
        except Exception as exc:
            log.warning("could not note a device login's session: %s", describe(exc))
        security_event(
            "device_login", user_id=user.id, session_id=pair.session_id, ip=row.ip,
            client_id=row.client_id,
        )  # fmt: skip
        return pair, " ".join(sorted(user.scopes))

    async def _unclaim(self, code_hash: str) -> None:
        async with self.manager.db() as db:
            await db.execute(
                update(DeviceCode)
                .where(
                    DeviceCode.code_hash == code_hash,
                    DeviceCode.status == USED,
                    DeviceCode.session_id.is_(None),
                )
                .values(status=APPROVED)
            )
            await db.commit()

    # -- the person ---------------------------------------------------------
    async def lookup(self, typed: str, user_id: int, address: str | None) -> DeviceRequest:
        """The pending request a person's typed code names; wrong codes are throttled."""
        code = device_codes.read_user_code(typed)
        if code is None:
            raise NotFound("That is not a code: 8 letters, such as BCDF-GHJK.")
        names = self._throttle_names(user_id, address)
        await self._check_throttle(names)
        found = await self._pending_request(code)
        if found is None:
            await self._count_failure(names)
            security_event("device_code_wrong", user_id=user_id, ip=address)
            raise NotFound("No device is waiting for that code: it is wrong, used or expired.")
        return found

    async def decide(
        self, typed: str, user: UserRecord, address: str | None, *, approve: bool
    ) -> DeviceRequest:
        """Approve or deny the code for ``user``; only the first decision counts."""
        request = await self.lookup(typed, user.id, address)
        if approve:
            missing = [s for s in request.scopes if s not in user.scopes]
            if missing:
                raise InsufficientScope(
                    set(missing),
                    f"The device asks for scopes this account does not have: {' '.join(missing)}.",
                )
        now = self.manager.clock()
        async with self.manager.db() as db:
            changed = await db.execute(
                update(DeviceCode)
                .where(
                    DeviceCode.user_code == request.user_code,
                    DeviceCode.status == PENDING,
                    DeviceCode.expires_at > utc(now),
                )
                .values(
                    status=APPROVED if approve else DENIED, user_id=user.id, decided_at=utc(now)
                )
            )
            await db.commit()
        if changed.rowcount != 1:  # type: ignore[attr-defined]
            raise NotFound("That code was confirmed or denied already, or has expired.")
        security_event(
            "device_approved" if approve else "device_denied", user_id=user.id, ip=address,
            device_ip=request.ip, client_id=request.client_id,
        )  # fmt: skip
        return request

    async def decide_as(self, typed: str, user_id: int, *, approve: bool) -> DeviceRequest:
        """``decide`` for the user ``user_id``, with no address (the test kit's helper)."""
        user = await self.manager.users.get_by_id(user_id)
        if user is None or user.disabled:
            raise NotFound("No such user, or the user is disabled.")
        return await self.decide(typed, user, None, approve=approve)

    async def _pending_request(self, code: str) -> DeviceRequest | None:
        now = self.manager.clock()
        async with self.manager.db() as db:
            row = (
                await db.execute(select(DeviceCode).where(DeviceCode.user_code == code))
            ).scalar_one_or_none()
        if row is None or row.status != PENDING or now >= row.expires_at.timestamp():
            return None
        return DeviceRequest(
            user_code=row.user_code, device=row.device, ip=row.ip, user_agent=row.user_agent,
            client_id=row.client_id, scopes=tuple(row.scope.split()),
            requested_at=row.created_at.timestamp(), expires_at=row.expires_at.timestamp(),
        )  # fmt: skip

    @staticmethod
    def _throttle_names(user_id: int, address: str | None) -> tuple[str, str]:
        return f"user:{user_id}", f"address:{throttle_address(address or '')}"

    async def _check_throttle(self, names: tuple[str, str]) -> None:
        store = self.manager.store
        limit = self.manager.settings.login_max_failures
        for name in names:
            key = store.throttle_key(THROTTLE_KIND, name)
            count = await store.redis.get(key)
            if count is not None and int(count) >= limit:
                ttl = await store.redis.ttl(key)
                security_event("device_code_throttled", name=name, retry_after=int(ttl))
                raise TooManyAttempts(max(1, int(ttl)))

    async def _count_failure(self, names: tuple[str, str]) -> None:
        window = self.manager.settings.login_window
        for name in names:
            await self.manager.store.record_failure(name, window, kind=THROTTLE_KIND)


_BY_MANAGER: weakref.WeakKeyDictionary[SessionManager, DeviceLogins] = weakref.WeakKeyDictionary()


def device_logins(manager: SessionManager) -> DeviceLogins:
    """The device logins of a started extension (one per session manager)."""
    found = _BY_MANAGER.get(manager)
    if found is None:
        found = _BY_MANAGER[manager] = DeviceLogins(manager)
    return found


__all__ = ["DeviceLogins", "DeviceRequest", "Started", "device_logins", "session_device"]
