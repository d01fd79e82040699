"""Running the alembic migrations from code (``db upgrade``, ``serve``, tests)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from alembic import command
from alembic.config import Config

# The migrations ship inside the package, so an installed copy finds them
# with no alembic.ini: the configuration is built here, in code.
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    """An alembic ``Config`` for the migrations shipped in the package, against ``url``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Alembic's config is an INI file: a literal % must be doubled.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _in_thread(work: Callable[[], None]) -> None:
    # env.py runs its own event loop, which cannot start inside a running one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(work).result()


def upgrade(url: str, revision: str = "head") -> None:
    """``alembic upgrade`` against ``url``; blocking (it runs its own event loop)."""
    _in_thread(lambda: command.upgrade(alembic_config(url), revision))


def downgrade(url: str, revision: str = "base") -> None:
    _in_thread(lambda: command.downgrade(alembic_config(url), revision))
