"""What the OAuth endpoints share on one started extension: clients, their sessions, jtis."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from ..sessions import SessionManager
from .client_auth import ClientAuthenticator
from .client_sessions import ClientSessions
from .clients import ClientRegistry

if TYPE_CHECKING:
    from ..app import TokenGate


class ServiceAccounts:
    """The client registry, the sessions of client tokens and client authentication."""

    def __init__(self, manager: SessionManager, redis: object) -> None:
        self.manager = manager
        self.registry = ClientRegistry(manager)
        self.sessions = ClientSessions(manager, self.registry)
        self.authenticator = ClientAuthenticator(self.registry, redis, manager.settings.leeway)


# One per started extension: a restart makes a new session manager, and so a new one.
_BY_MANAGER: weakref.WeakKeyDictionary[SessionManager, ServiceAccounts] = (
    weakref.WeakKeyDictionary()
)


def service_accounts(gate: TokenGate) -> ServiceAccounts:
    """The service accounts of a started extension."""
    manager = gate.manager
    found = _BY_MANAGER.get(manager)
    if found is None:
        found = _BY_MANAGER[manager] = ServiceAccounts(manager, gate.redis)
    return found
