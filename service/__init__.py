"""tokengate: token authentication for Quart.

The names below are imported on first use, so that the command line can
answer ``tokengate --help`` (or say which extra to install) without importing
Quart, SQLAlchemy and redis first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# Where each public name lives.
_HOMES = {
    "Identity": ".identity",
    "Settings": ".settings",
    "TokenGate": ".app",
    "UserRecord": ".users",
    "UserStore": ".users",
    "create_app": ".app",
    "current_identity": ".guard",
    "current_identity_or_none": ".guard",
    "get_gate": ".guard",
    "login_required": ".guard",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = importlib.import_module(home, __name__)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.startswith(__name__):
            raise
        # A base install (the client alone) has none of the service's dependencies.
        raise ModuleNotFoundError(
            f'{exc}: the service needs its extra: pip install "quart-tokengate[server]"',
            name=exc.name,
        ) from exc
    value = getattr(module, name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
