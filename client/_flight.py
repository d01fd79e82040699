"""The single flight: one renewal of the tokens, however many requests need it.

Written once for both edges. The first request to need new tokens becomes the
*leader* and starts a ``Flight``; every other request that needs them
meanwhile waits for that flight's outcome (``Wait``) instead of refreshing too.
A request stamped with tokens older than the stored ones simply takes the
stored ones. The leader asks the store first (``begin_refresh``: a
``FileTokenStore`` re-reads the file, and may say another process is
refreshing: ``Sleep`` and ask again), runs ``obtain``, stores the result and
lands the flight: every waiter gets the new tokens, or its own copy of the
error, once; the next request starts afresh. The user's hooks run after
landing (``Hook``). A leader that is cancelled lands the flight empty, and one
of the waiters takes over. No lock is held across any ``yield``: the single
flight's lock guards a few assignments, and a store's lock one
read-modify-write of its file.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
from collections.abc import Callable, Generator
from typing import Any, cast

from ._exceptions import AuthError
from ._flow import Clock, Hook, Op, Renew, Renewal, Sleep, Wait, describe, obtain
from ._tokens import KEEP, Change, Lease, Tokens, TokenStore

log = logging.getLogger("tokengate.client")
# A renewal of another grant's: a pure flow that never raises (``obtain``'s contract).
Fetch = Callable[[], Generator[Op, Any, Renewal]]


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Flight:
    """One renewal in progress, which any number of requests, threads or tasks wait for."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        # None when the leader was cancelled before it had an outcome.
        self.outcome: Renewal | None = None

    def land(self, outcome: Renewal | None) -> None:
        with self._lock:
            self.outcome = outcome
            self._done.set()
            waiters, self._waiters = self._waiters, []
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for loop, future in waiters:
            if loop is running:
                _wake(future)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(_wake, future)

    def wait(self) -> Renewal | None:
        self._done.wait()
        return self.outcome

    async def wait_async(self) -> Renewal | None:
        loop = asyncio.get_running_loop()
        # A future of this waiter's own: cancelling one waiter touches no other.
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._done.is_set():
                return self.outcome
            self._waiters.append((loop, future))
        await future
        return self.outcome


def deliver(outcome: Renewal, *, shared: bool) -> Tokens:
    """The outcome's tokens, or raise its error (a copy of it for each waiter)."""
    if outcome.error is not None:
        if not shared:
            raise outcome.error
        error = copy.copy(outcome.error)
        raise error.with_traceback(None) from outcome.error.__cause__
    assert outcome.tokens is not None
    return outcome.tokens


class SingleFlight:
    """Serves ``Renew`` operations: joins the flight in progress, or leads a new one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flight: Flight | None = None

    def _join(
        self, stale: Tokens | None, store: TokenStore, usable: Callable[[Tokens], bool]
    ) -> Tokens | tuple[Flight, bool]:
        with self._lock:
            if self._flight is not None:
                return self._flight, False
            current = store.load()
            if current is not None and current != stale and usable(current):
                return current
            self._flight = Flight()
            return self._flight, True

    def _land(self, flight: Flight, outcome: Renewal | None) -> None:
        with self._lock:
            if self._flight is flight:
                self._flight = None
        flight.land(outcome)

    def renewal(
        self,
        op: Renew,
        store: TokenStore,
        *,
        usable: Callable[[Tokens], bool],
        can_login: bool,
        clock: Clock,
        fetch: Fetch | None = None,
        dpop: bool = False,
    ) -> Generator[Op, Any, Tokens]:
        """Serve ``op``: tokens newer than ``op.stale``, or raise why there are none.

        ``fetch`` makes the renewal another grant's flow (a service account's
        ``_grants.fetch_flow``) instead of a refresh or a login; ``dpop`` has
        the refresh or login ask for DPoP-bound tokens (``obtain``).
        """
        while True:
            turn = self._join(op.stale, store, usable)
            if isinstance(turn, Tokens):
                return turn
            flight, leading = turn
            if leading:
                break
            landed = yield Wait(flight)
            if landed is not None:
                return deliver(landed, shared=True)
            # Its leader was cancelled: lead in its place, or wait for whoever does.
        outcome: Renewal | None = None
        try:
            outcome = yield from _lead(
                op, store, usable=usable, can_login=can_login, clock=clock, fetch=fetch, dpop=dpop
            )
        except AuthError as exc:  # the store could not be locked
            outcome = Renewal(error=exc)
        finally:
            self._land(flight, outcome)
        assert outcome is not None
        for name, value in outcome.notes:
            yield Hook(name, value)
        return deliver(outcome, shared=False)


def _lead(
    op: Renew,
    store: TokenStore,
    *,
    usable: Callable[[Tokens], bool],
    can_login: bool,
    clock: Clock,
    fetch: Fetch | None = None,
    dpop: bool = False,
) -> Generator[Op, Any, Renewal]:
    while True:
        claim = store.begin_refresh(op.stale, usable)
        if isinstance(claim, Tokens):
            return Renewal(tokens=claim)  # another process refreshed already
        if isinstance(claim, Lease):
            break
        yield Sleep(claim)
    lease, change = claim, cast(Change, KEEP)
    try:
        if fetch is not None:
            outcome = yield from fetch()
        else:
            outcome = yield from obtain(
                lease.tokens,
                relogin=op.relogin and lease.tokens == op.stale,
                reason=op.reason,
                can_login=can_login,
                clock=clock,
                dpop=dpop,
            )
        change = outcome.change
    finally:
        _end_refresh(store, lease, change)
    if outcome.error is not None:
        log.warning("could not renew the tokens: %s", outcome.error)
    else:
        assert outcome.tokens is not None
        log.info("tokens renewed (session %s)", outcome.tokens.session_id)
    return outcome


def _end_refresh(store: TokenStore, lease: Lease, change: Change) -> None:
    """Store the refresh's result and release the lease; try twice, never raise.

    The outcome stands either way: the service has rotated the refresh
    token, so its new pair is what every waiter needs, even when the store
    could not take it (the file lock timed out, say).
    """
    for attempt in (1, 2):
        try:
            store.end_refresh(lease, change)
            return
        except Exception as exc:
            again = "; trying once more" if attempt == 1 else ""
            log.warning("could not store the refresh's result: %s%s", describe(exc), again)
