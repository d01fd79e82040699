"""Session lifecycle: opening a session, the guard's check, refresh rotation, ending, limits.

SQL holds the durable truth about every session; Redis holds its hot state
and makes every decision atomically (``store/redis_store.py``). Writes that
end a session go to SQL first and Redis second, so a Redis that loses its
data can always be rebuilt from SQL without reviving anything.

One module per seam: ``core`` (state, minting, running a script and
rebuilding what Redis lost), ``opening`` (login), ``checking`` (the guard),
``rotating`` (refresh), ``closing`` (logout, revoke, listing).
"""

from __future__ import annotations

from .checking import VERIFIED_CACHE_SIZE, Checking
from .closing import Closing
from .core import END_REASON_ERRORS, SessionCore
from .opening import Opening
from .rotating import ROTATION_WRITE_WAITS, Rotating

__all__ = [
    "END_REASON_ERRORS",
    "ROTATION_WRITE_WAITS",
    "VERIFIED_CACHE_SIZE",
    "SessionCore",
    "SessionManager",
]


class SessionManager(Opening, Checking, Rotating, Closing):
    """The session lifecycle, over one Redis store and one database.

    Every decision about a live session (alive? idle? too old? which pair
    now?) is made by a script in Redis (``store/``); this class mints the
    tokens, keeps SQL in step, and rebuilds what Redis lost.
    """
