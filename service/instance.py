"""The instance folder: made private (0700), the files the service keeps there 0600.

The folder holds the embedded database, the key-encryption key file, the
private Redis and the outbox: nothing in it is for another user of the
machine. SQLite gives its ``-wal``, ``-shm`` and ``-journal`` files the mode
of the database file, so a database file made 0600 before SQLite first opens
it keeps them private too.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger("tokengate")

DATABASE_FILE = "tokengate.db"
SQLITE_SIDECARS = ("-wal", "-shm", "-journal")
_OTHERS = stat.S_IRWXG | stat.S_IRWXO


def private_dir(path: Path) -> None:
    """Create ``path`` and any missing parent with mode 0700; warn if it was there, open to others.

    A folder that already exists is not changed (it may be the operator's,
    shared on purpose): the warning names the fix.
    """
    missing: list[Path] = []
    at = path
    while not at.exists():
        missing.append(at)
        at = at.parent
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
    if not missing and stat.S_IMODE(path.stat().st_mode) & _OTHERS:
        log.warning(
            "the instance folder %s is open to other users (mode %o): chmod 700 it",
            path,
            stat.S_IMODE(path.stat().st_mode),
        )


def private_file(path: Path) -> None:
    """Make ``path`` an owner-only file (0600): created empty if missing, else tightened."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & _OTHERS:
            path.chmod(mode & ~_OTHERS)
    else:
        os.close(fd)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by the owner alone."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def prepare(settings: Settings) -> None:
    """Make the instance folder private and, for the embedded database, its files 0600.

    Blocking; call it before anything opens the embedded database. Files an
    older version left readable by others are tightened.
    """
    private_dir(settings.instance_dir)
    if settings.database_url is not None:
        return
    database = settings.instance_dir / DATABASE_FILE
    private_file(database)
    for suffix in SQLITE_SIDECARS:
        sidecar = database.with_name(database.name + suffix)
        if sidecar.exists():
            private_file(sidecar)
