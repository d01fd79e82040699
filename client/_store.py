"""Where a client keeps its tokens: in memory, or in a file that processes share.

A store is small and synchronous: ``load``, an atomic ``update`` and, for the
refresh, ``begin_refresh``/``end_refresh``. The client never holds one of its
locks while a request is on the wire: ``FileTokenStore`` marks a refresh in
progress with a *lease* written into the file (who, until when), so other
processes wait for the new tokens instead of refreshing too, and still read
the file freely meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import filelock

from ._exceptions import AuthError
from ._tokens import KEEP, Change, Lease, Tokens, TokenStore, as_number, same_refresh_token

log = logging.getLogger("tokengate.client")

FILE_VERSION = 1
# How often a process waiting on another process's refresh looks at the file again.
LEASE_POLL_INTERVAL = 0.05


class MemoryTokenStore(TokenStore):
    """Tokens in memory, for this client only: gone when the process ends."""

    def __init__(self, tokens: Tokens | Mapping[str, Any] | None = None) -> None:
        if tokens is not None and not isinstance(tokens, Tokens):
            tokens = Tokens.from_json(tokens)
        self._tokens: Tokens | None = tokens
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryTokenStore(tokens={self._tokens!r})"

    def load(self) -> Tokens | None:
        return self._tokens

    def update(self, change: Callable[[Tokens | None], Tokens | None]) -> Tokens | None:
        with self._lock:
            self._tokens = change(self._tokens)
            return self._tokens


# The leases this process holds for refreshes still under way (FileTokenStore).
_leases_in_flight: set[str] = set()
_leases_lock = threading.Lock()


def _process_alive(pid: int) -> bool:
    if os.name != "posix":  # signal 0 means something else on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FileTokenStore(TokenStore):
    """Tokens in a JSON file (mode 0600) that several processes can share.

    Every write goes to a temporary file in the same directory and is renamed
    over the old one, under a ``filelock`` lock, so a reader never sees half a
    file. Before refreshing, a process re-reads the file: if another process
    already stored newer tokens it uses them; if another process is refreshing
    right now (its lease is in the file) it waits for the result. So the
    processes sharing a file refresh once between them, and none of them is
    logged out by another's refresh-token rotation. The file also keeps the
    service's base URL for the command line, the device tokens of the
    accounts logged in to (``device_tokens``, by username) and the DPoP key
    the tokens are bound to (``dpop_key``), so processes sharing the file
    share the key too.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, lock_timeout: float = 10.0, lease_ttl: float = 30.0
    ) -> None:
        self.path = Path(path).expanduser()
        self.lock_timeout = lock_timeout
        # A lease older than this is ignored (its holder hung or died elsewhere).
        self.lease_ttl = lease_ttl
        self._file_lock = filelock.FileLock(
            f"{self.path}.lock", timeout=lock_timeout, mode=0o600, thread_local=False
        )
        # Threads of one process take turns at the file lock.
        self._mutex = threading.Lock()
        # The file's content and tokens as last read, keyed on its inode, mtime and size.
        self._cache: tuple[tuple[int, int, int], dict[str, Any], Tokens | None] | None = None

    def __repr__(self) -> str:
        return f"FileTokenStore({str(self.path)!r})"

    # -- reading and writing ----------------------------------------------
    def _parse(self, raw: bytes) -> dict[str, Any]:
        try:
            data = json.loads(raw)
        except ValueError:
            log.warning("token file %s is not valid JSON; treating it as empty", self.path)
            return {}
        return data if isinstance(data, dict) else {}

    def _read(self) -> dict[str, Any]:
        try:
            return self._parse(self.path.read_bytes())
        except FileNotFoundError:
            return {}

    def _current(self) -> tuple[dict[str, Any], Tokens | None]:
        """The file's content and tokens, re-read only when the file changed (a ``stat``)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}, None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._cache
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        data = self._read()
        tokens = self._tokens_of(data)
        self._cache = (key, data, tokens)
        return data, tokens

    def _write(self, data: dict[str, Any]) -> None:
        data["version"] = FILE_VERSION
        fd, tmp = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
        )
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                os.fchmod(f.fileno(), 0o600)
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._mutex:
            try:
                self._file_lock.acquire()
            except filelock.Timeout:
                raise AuthError(
                    f"Could not lock the token file {self.path} within {self.lock_timeout}s."
                ) from None
            try:
                yield
            finally:
                self._file_lock.release()

    @staticmethod
    def _tokens_of(data: Mapping[str, Any]) -> Tokens | None:
        raw = data.get("tokens")
        if not isinstance(raw, dict):
            return None
        try:
            return Tokens.from_json(raw)
        except ValueError:
            return None

    # -- the store --------------------------------------------------------
    def load(self) -> Tokens | None:
        return self._current()[1]

    def update(self, change: Callable[[Tokens | None], Tokens | None]) -> Tokens | None:
        with self._locked():
            data = self._read()
            current = self._tokens_of(data)
            new = change(current)
            if new != current:
                data["tokens"] = None if new is None else new.to_json()
                self._write(data)
            return new

    @property
    def base_url(self) -> str | None:
        """The service's base URL, as the command line stored it."""
        url = self._current()[0].get("base_url")
        return url if isinstance(url, str) else None

    @base_url.setter
    def base_url(self, url: str | None) -> None:
        with self._locked():
            data = self._read()
            data["base_url"] = url
            self._write(data)

    def device_token(self, username: str) -> str | None:
        kept = self._current()[0].get("device_tokens")
        token = kept.get(username) if isinstance(kept, dict) else None
        return token if isinstance(token, str) and token else None

    def keep_device_token(self, username: str, token: str) -> None:
        # Beside the tokens, in a key older versions never read (and keep as
        # they rewrite the file), so the format stays readable both ways.
        with self._locked():
            data = self._read()
            kept = data.get("device_tokens")
            data["device_tokens"] = {**(kept if isinstance(kept, dict) else {}), username: token}
            self._write(data)

    def dpop_key(self, create: Callable[[], dict[str, str]] | None = None) -> dict[str, str] | None:
        # In the file beside the tokens, in a key older versions never read
        # (and keep as they rewrite the file). Made under the file's lock, and
        # only when the file, read again under it, still holds none: processes
        # sharing the file make one key between them, never two.
        kept = self._current()[0].get("dpop_key")
        if isinstance(kept, dict) or create is None:
            return kept if isinstance(kept, dict) else None
        with self._locked():
            data = self._read()
            kept = data.get("dpop_key")
            if not isinstance(kept, dict):
                kept = data["dpop_key"] = create()
                self._write(data)
            return kept

    # -- the refresh, across processes -------------------------------------
    def _lease_live(self, lease: Any) -> bool:
        if not isinstance(lease, dict):
            return False
        until = as_number(lease.get("until"))
        if until is None or until <= time.time():
            return False
        pid = lease.get("pid")
        if lease.get("host") == socket.gethostname() and isinstance(pid, int):
            if pid == os.getpid():
                # Ours: live only while that refresh is under way, not when a
                # failed end_refresh left it behind.
                with _leases_lock:
                    return lease.get("id") in _leases_in_flight
            return _process_alive(pid)
        return True

    def begin_refresh(
        self, stale: Tokens | None, usable: Callable[[Tokens], bool]
    ) -> Tokens | Lease | float:
        with self._locked():
            data = self._read()
            current = self._tokens_of(data)
            if current is not None and current != stale and usable(current):
                return current
            if self._lease_live(data.get("refresh_lease")):
                return LEASE_POLL_INTERVAL
            lease = Lease(secrets.token_hex(8), current)
            data["refresh_lease"] = {
                "id": lease.id,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "until": time.time() + self.lease_ttl,
            }
            with _leases_lock:
                _leases_in_flight.add(lease.id)
            try:
                self._write(data)
            except BaseException:
                with _leases_lock:
                    _leases_in_flight.discard(lease.id)
                raise
            return lease

    def end_refresh(self, lease: Lease, change: Change) -> None:
        with _leases_lock:
            _leases_in_flight.discard(lease.id)
        with self._locked():
            data = self._read()
            held = data.get("refresh_lease")
            if isinstance(held, dict) and held.get("id") == lease.id:
                data["refresh_lease"] = None
            if change is not KEEP and same_refresh_token(self._tokens_of(data), lease.tokens):
                data["tokens"] = None if change is None else change.to_json()
            self._write(data)
