"""tokengate: token authentication for Quart."""

from .app import TokenGate, create_app
from .guard import current_identity, current_identity_or_none, get_gate, login_required
from .identity import Identity
from .settings import Settings
from .users import UserRecord, UserStore

__all__ = [
    "Identity",
    "Settings",
    "TokenGate",
    "UserRecord",
    "UserStore",
    "create_app",
    "current_identity",
    "current_identity_or_none",
    "get_gate",
    "login_required",
]
