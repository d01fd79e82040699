"""Near checks: a session this instance saw live a moment ago is let through
without waiting for Redis, and never once it has been ended anywhere.

They are on by default (``TOKENGATE_NEAR_CACHE``, ``docs/design.md``, "Near
checks"), where they are safe: before each subscription, and every
``RECHECK_EVERY`` heartbeats while subscribed, the instance makes sure Redis
keeps what it holds (no ``maxmemory``, or ``maxmemory-policy noeviction``: an
evicted lease set would hide this instance from an ender) and lets this user
read ``INFO`` (an ender reads Redis's uptime: just after a restart, which lost
the lease set, it waits out any lease); a Redis user refused the ``tg:*``
channels turns them off too. Either way the instance says why
and every request waits for Redis, as with ``TOKENGATE_NEAR_CACHE=false``. The
guard still sends its check for every request; it only stops waiting for the
answer when all of this holds:

- **The entry.** Redis said the session was live less than ``NEAR_TTL``
  seconds ago (by the app's clock), its absolute age is not over, and the
  idle timeout cannot have run out since. Each answer that comes back
  renews the entry; any other answer drops it.
- **The lease.** Every ``HEARTBEAT`` seconds the instance runs
  ``lease.lua``: it puts the instance in the lease set ``tg:near`` until
  Redis's time plus ``LEASE``, then publishes a heartbeat on the instance's
  own channel. Once that heartbeat comes back over the instance's
  subscription, near answers are allowed until the moment it was *sent*
  plus ``LEASE`` minus ``MARGIN`` (the monotonic clock). So the instance
  stops answering near before its lease ends in Redis.
- **The announcements.** Every script that ends a session publishes
  ``"<note> <sid> ..."`` on ``tg:ends`` in the same script (``announce`` in
  ``session_lib.lua``). The instance drops those entries and, when the note
  is not empty, acknowledges with ``RPUSH tg:near:ack:<note> <instance id>``.
  The caller that ended them waits, before it answers, for the
  acknowledgement of every instance holding a lease, or for that lease to
  end (``RedisSessionStore.settle``): at most ``LEASE`` seconds.
- **Order.** Redis delivers one connection's messages in the order it ran
  the ``PUBLISH``\\es. A heartbeat that comes back proves that every end
  announced before it has been handled. A stalled subscription therefore
  lets the lease run out; it never lets an entry outlive its end.
- **Answers in flight.** An announcement handled while a check is on its
  way (the two travel on different connections) makes that check's answer
  too old to keep: ``epoch`` counts announcements and subscriptions.
- **A lost subscription** forgets every entry and every heartbeat. A new
  one counts only from its own first heartbeat. One that brings none of the
  instance's heartbeats back for ``SILENT`` seconds while they are sent (a
  peer gone without a word; the socket also has TCP keepalive) is closed and
  made again, so that ends stop waiting out this instance's lease.

It runs over the lean pipelined connection (one Redis over ``redis://`` or
``unix://``); with anything else it stays off and says so at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import socket
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import hiredis
from redis.exceptions import RedisError, ResponseError

from .pipelined import PipelinedScripts, _pack, auth_command, open_connection

log = logging.getLogger("tokengate")

# Where the ends are announced, and the set of lease holders.
ENDS_CHANNEL = b"tg:ends"
LEASE_KEY = "tg:near"
# How long one heartbeat lets the instance answer near, and how often it
# sends one: three may be lost before near answers stop.
LEASE = 1.0
HEARTBEAT = 0.25
# Near answers stop this long before the lease ends in Redis.
MARGIN = 0.1
# How long after Redis last said "live" an entry may answer.
NEAR_TTL = 1.0
# Entries kept at most; the oldest goes first.
MAX_ENTRIES = 100_000
# An acknowledgement list outlives any wait for it.
ACK_TTL_MS = 10_000
# Waiting for a lost subscription to come back, between tries.
RECONNECT = 0.2
# While subscribed, Redis's eviction settings are read again every this many
# heartbeats (a CONFIG SET at run time), and a subscription that has not brought
# back one of the instance's own heartbeats for SILENT seconds, while they are
# sent, is taken for dead (a peer whose FIN never came) and made again.
RECHECK_EVERY = 8
SILENT = 3 * LEASE


def ack_key(note: str) -> str:
    return f"{LEASE_KEY}:ack:{note}"


def new_note() -> str:
    """The note an end is announced with: the list its acknowledgements go to."""
    return secrets.token_hex(8)


def _script(name: str) -> tuple[str, str]:
    source = resources.files(__package__ or __name__).joinpath("lua", f"{name}.lua")
    text = source.read_text(encoding="utf-8")
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest(), text


class _Subscriber(asyncio.Protocol):
    """The instance's subscription: every message goes to ``near.heard``."""

    def __init__(self, near: NearChecks) -> None:
        self.near = near
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.subscribed = asyncio.get_running_loop().create_future()
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if isinstance(reply, hiredis.ReplyError):
                # NOPERM (an ACL without the channels) is for good; the rest is retried.
                error = ResponseError if str(reply).startswith("NOPERM") else RedisError
                self._fail(error(f"Redis refused the subscription: {reply}"))
            elif isinstance(reply, list) and reply and reply[0] == b"message":
                self.near.heard(reply[1], reply[2], self)
            elif isinstance(reply, list) and reply[:1] == [b"subscribe"] and reply[2] == 2:
                # Both channels are subscribed: what is published from now on reaches us.
                self._subscribed()

    def _subscribed(self) -> None:
        if not self.subscribed.done():
            self.subscribed.set_result(None)
            # At once, not when the awaiting task resumes: a message in the same
            # read as this confirmation must be heard (an end to acknowledge).
            self.near.subscribed(self)

    def _fail(self, exc: BaseException) -> None:
        self._not_subscribed(exc)
        if self.transport is not None:
            self.transport.close()

    def _not_subscribed(self, exc: BaseException) -> None:
        if not self.subscribed.done():
            self.subscribed.set_exception(exc)
            # Whoever awaits it still gets it; nobody may (an instance shutting
            # down mid-subscription): then it is no "exception never retrieved".
            self.subscribed.exception()

    def connection_lost(self, exc: Exception | None) -> None:
        self._not_subscribed(RedisError("Connection to Redis lost."))
        if not self.lost.done():
            self.lost.set_result(None)
        self.near.forget(self)


class NearChecks:
    """This instance's near answers: entries, lease, subscription (see the module)."""

    def __init__(
        self,
        scripts: PipelinedScripts,
        *,
        idle_timeout: int,
        max_age: int,
        clock: Callable[[], float] = time.time,
        vouched: bool = False,
    ) -> None:
        self.scripts = scripts
        # TOKENGATE_NEAR_CACHE=true: the operator vouches that Redis never
        # evicts, where this user may not read the eviction settings.
        self.vouched = vouched
        self.clock = clock
        self.params = scripts.params
        self.idle_timeout = idle_timeout
        self.max_age = max_age
        self.id = secrets.token_hex(8)
        self.channel = f"tg:near:{self.id}".encode()
        # sid -> (when Redis last said live, by the app's clock; when it was created),
        # the least recently said live first.
        self.entries: dict[str, tuple[float, float]] = {}
        self.epoch = 0
        self.valid_until = 0.0  # monotonic
        # How many requests were let through near (for tests and metrics).
        self.hits = 0
        # Why near checks turned themselves off (``unsafe``, a refused channel).
        self.off: str | None = None
        self._subscriber: _Subscriber | None = None
        self._sent: dict[int, float] = {}
        self._seq = 0
        self._heard_at = 0.0  # monotonic: the last of our heartbeats heard back
        self._task: asyncio.Task[None] | None = None
        self._acks: set[asyncio.Task[None]] = set()
        self._lease = _script("lease")
        self._ack = _script("ack")
        self._release_script = _script("release")

    # -- the guard's side --------------------------------------------------
    def fresh(self, sid: str, now: float) -> bool:
        """May a request of ``sid`` at ``now`` go through without waiting for Redis?"""
        entry = self.entries.get(sid)
        if entry is None or time.monotonic() >= self.valid_until:
            return False
        seen, created = entry
        quiet = now - seen
        # (A clock set back makes ``quiet`` negative: that entry waits for Redis too.)
        if not 0 <= quiet < NEAR_TTL or now - created >= self.max_age:
            return False
        if self.idle_timeout and quiet >= self.idle_timeout:
            return False
        self.hits += 1
        return True

    def keep(self, sid: str, now: float, created: float, epoch: int) -> None:
        """Redis said ``sid`` is live at ``now``, in a check sent at ``epoch``."""
        if epoch != self.epoch or self._subscriber is None:
            return  # an end, or a new subscription, came since it was sent
        entries = self.entries
        if entries.pop(sid, None) is None and len(entries) >= MAX_ENTRIES:
            del entries[next(iter(entries))]
        entries[sid] = (now, created)  # to the end: the order stays by time

    def prune(self) -> None:
        """Forget the entries too old to answer (from the front: the oldest)."""
        entries, now = self.entries, self.clock()
        while entries:
            sid = next(iter(entries))
            if now - entries[sid][0] < NEAR_TTL:
                return
            del entries[sid]

    def drop(self, sid: str) -> None:
        self.entries.pop(sid, None)

    # -- the subscription ----------------------------------------------------
    def heard(self, channel: bytes, data: bytes, subscriber: _Subscriber) -> None:
        if subscriber is not self._subscriber:
            return
        if channel == ENDS_CHANNEL:
            note, _, sids = data.partition(b" ")
            for sid in sids.split():
                self.entries.pop(sid.decode(), None)
            self.epoch += 1
            if note:
                self._acknowledge(note.decode())
        elif channel == self.channel and data.isdigit():
            seq = int(data)
            sent = self._sent.pop(seq, None)
            for older in [s for s in self._sent if s < seq]:
                del self._sent[older]
            self._heard_at = time.monotonic()
            if sent is not None:
                self.valid_until = max(self.valid_until, sent + LEASE - MARGIN)

    def subscribed(self, subscriber: _Subscriber) -> None:
        """A new subscription: every end announced from now on reaches us."""
        self._subscriber = subscriber
        self._heard_at = time.monotonic()
        self.epoch += 1  # checks sent before it could have missed an end

    def forget(self, subscriber: _Subscriber) -> None:
        """A subscription is gone: what it would have told us may be lost."""
        if subscriber is not self._subscriber:
            return
        self._subscriber = None
        self.entries.clear()
        self._sent.clear()
        self.valid_until = 0.0
        self.epoch += 1

    def _acknowledge(self, note: str) -> None:
        sha, source = self._ack
        task = asyncio.ensure_future(
            self.scripts.run(sha, source, (ack_key(note),), (self.id, ACK_TTL_MS))
        )
        self._acks.add(task)
        task.add_done_callback(self._acked)

    def _acked(self, task: asyncio.Task[Any]) -> None:
        self._acks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The ender then waits for our lease to end instead.
            log.warning("could not acknowledge an end: %s", task.exception())

    async def _subscribe(self) -> _Subscriber:
        async with asyncio.timeout(self.scripts.timeout):
            protocol = await open_connection(self.params, lambda: _Subscriber(self))
        transport = protocol.transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        if sock is not None:  # a peer gone without a word is found out in time
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        try:
            await self._send_subscribe(protocol, transport)
        except BaseException:
            transport.close()  # never a half-made subscription left behind
            raise
        return protocol

    async def _send_subscribe(self, protocol: _Subscriber, transport: asyncio.Transport) -> None:
        async with asyncio.timeout(self.scripts.timeout):
            auth = auth_command(self.params)
            commands = [] if auth is None else [auth]
            commands.append(_pack("CLIENT", "SETNAME", f"tokengate-near-{self.id}"))
            commands.append(_pack("SUBSCRIBE", ENDS_CHANNEL, self.channel))
            transport.write(b"".join(commands))
            await protocol.subscribed

    async def _heartbeat(self) -> None:
        self._seq += 1
        seq, sent = self._seq, time.monotonic()
        # Heartbeats that never came back (refused, lost) are of no use once a
        # lease older: they are not kept for ever.
        for old in [s for s, at in self._sent.items() if sent - at > LEASE]:
            del self._sent[old]
        self._sent[seq] = sent
        sha, source = self._lease
        async with asyncio.timeout(LEASE):
            await self.scripts.run(sha, source, (LEASE_KEY,), (self.id, int(LEASE * 1000), seq))

    async def unsafe(self) -> str | None:
        """Why near answers would not be safe on this Redis now, or ``None``.

        An evicting Redis could drop the lease set, and an ender would then not
        wait for this instance. A Redis that cannot be reached raises (the
        caller tries again); one that refuses to show its settings is taken at
        the operator's word only with ``TOKENGATE_NEAR_CACHE=true``.
        """
        try:
            reply = await self.scripts.call("CONFIG", "GET", "maxmemory*")
        except ResponseError as exc:
            if self.vouched:
                return None
            return (
                f"Redis does not show this user its eviction settings ({exc}); "
                "set TOKENGATE_NEAR_CACHE=true if it never evicts keys"
            )
        found = dict(zip(reply[::2], reply[1::2], strict=False)) if isinstance(reply, list) else {}
        # Anything but these two answers (a missing one too) is taken as "may evict".
        limit, policy = found.get(b"maxmemory", b"?"), found.get(b"maxmemory-policy", b"?")
        if limit == b"0" or policy == b"noeviction":
            return await self._restart_unseen()
        return (
            f"Redis may evict keys (maxmemory {limit.decode(errors='replace')}, "
            f"maxmemory-policy {policy.decode(errors='replace')}); near checks need "
            "maxmemory-policy noeviction or no maxmemory"
        )

    async def _restart_unseen(self) -> str | None:
        """Why an ender could not see that Redis restarted lately, or ``None``.

        An ender reads Redis's uptime (``INFO server``, in ``holders.lua``) and,
        just after a restart that lost the lease set, waits out any lease.
        """
        try:
            await self.scripts.call("INFO", "server")
        except ResponseError as exc:
            if self.vouched:
                return None
            return (
                f"Redis does not let this user read INFO ({exc}), which an end needs "
                "to see a restart; grant +info, or set TOKENGATE_NEAR_CACHE=true"
            )
        return None

    def _hang_up(self, subscriber: _Subscriber) -> None:
        """No more near answers from ``subscriber``'s news: forgotten, its connection closed."""
        self.forget(subscriber)
        if subscriber.transport is not None:
            subscriber.transport.close()

    async def _release(self) -> None:
        """Give the lease back: enders stop waiting for this instance at once."""
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(self.scripts.timeout):
                await self.scripts.run(*self._release_script, (LEASE_KEY,), (self.id,))

    async def _turn_off(self, why: str, subscriber: _Subscriber) -> None:
        """Near checks off for good: no more near answers, the lease given back."""
        self._hang_up(subscriber)
        await self._release()
        self.off = why
        log.warning("near checks off: %s; every request waits for Redis", why)

    async def _keep_up(self) -> None:
        """Subscribe, then send heartbeats while the subscription lasts; again on loss.

        Before each subscription, :meth:`unsafe`: a Redis that may evict keys, or
        a user refused the ``tg:*`` channels, ends near checks for good (said once).
        """
        failing = False
        while True:
            try:
                why = await self.unsafe()
                if why is None:
                    subscriber = await self._subscribe()
            except ResponseError as exc:  # a refused subscription (``NOPERM``)
                why = f"{exc} (the Redis user needs the tg:* channels, &tg:*, and +client|setname)"
            except (RedisError, OSError, TimeoutError) as exc:
                # Once per outage, not every RECONNECT seconds.
                (log.debug if failing else log.warning)(
                    "near checks: cannot subscribe (%s); answering from Redis", exc
                )
                failing = True
                await asyncio.sleep(RECONNECT)
                continue
            if why is not None:
                self.off = why
                log.warning("near checks off: %s; every request waits for Redis", why)
                return
            if failing:
                log.warning("near checks: subscribed again")
                failing = False
            beats = 0
            while not subscriber.lost.done():
                self.prune()
                beats += 1
                try:
                    await self._heartbeat()
                    if beats % RECHECK_EVERY == 0 and (why := await self.unsafe()) is not None:
                        await self._turn_off(why, subscriber)
                        return
                except (RedisError, OSError, TimeoutError) as exc:
                    log.debug("near checks: heartbeat failed: %s", exc)
                else:
                    if time.monotonic() - self._heard_at > SILENT:
                        # Heartbeats go out and none comes back: a dead subscription.
                        log.warning("near checks: the subscription brings nothing; again")
                        self._hang_up(subscriber)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(HEARTBEAT):
                        await asyncio.shield(subscriber.lost)
            log.warning("near checks: subscription lost; answering from Redis until it is back")
            await asyncio.sleep(RECONNECT)

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.ensure_future(self._keep_up())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._subscriber is not None:
            self._hang_up(self._subscriber)
        for task in list(self._acks):
            task.cancel()
        await self._release()
