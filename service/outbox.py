"""Where purpose tokens (password reset) are sent.

The default, like Django's file e-mail backend, writes one JSON file per
message into ``<instance>/outbox/``. A real deployment passes its own
``Sender`` (an e-mail or SMS gateway) to ``TokenGate(app, sender=...)``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from .instance import private_dir

log = logging.getLogger("tokengate")


@dataclass(frozen=True, slots=True)
class Message:
    to: str
    purpose: str
    token: str = field(repr=False)
    created_at: datetime


class Sender(Protocol):
    async def send(self, message: Message) -> None:
        """Deliver ``message``; if it raises, the failure is logged (the caller gets 202)."""


class FileOutbox:
    """Writes each message as ``<outbox>/<time>-<random>.json`` (mode 0600)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def send(self, message: Message) -> None:
        path = await asyncio.to_thread(self._write, message)
        log.info("%s message for %s written to %s", message.purpose, message.to, path.name)

    def _write(self, message: Message) -> Path:
        private_dir(self.directory)
        stamp = message.created_at.strftime("%Y%m%dT%H%M%S")
        path = self.directory / f"{stamp}-{secrets.token_hex(4)}.json"
        body = {
            "to": message.to,
            "purpose": message.purpose,
            "token": message.token,
            "created_at": message.created_at.isoformat().replace("+00:00", "Z"),
        }
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(body, fh)
        tmp.replace(path)
        return path
