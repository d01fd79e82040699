"""tokengate: run the service and administer its database.

tokengate serve runs the service; tokengate db upgrade applies the migrations;
tokengate users create adds a user. Settings come from TOKENGATE_* variables.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .settings import Settings, SettingsError

if TYPE_CHECKING:
    from quart import Quart

log = logging.getLogger("tokengate")


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        for line in exc.problems:
            print(f"tokengate: {line}", file=sys.stderr)
        raise SystemExit(2) from None


def _logging(settings: Settings) -> None:
    """Configure this process's logging: every line in ``TOKENGATE_LOG_FORMAT``."""
    import logging.config

    from .logs import logging_config

    logging.config.dictConfig(logging_config(settings.log_format))


def serve_app() -> Quart:
    """What each ``serve`` worker runs: logging configured, then ``create_app()``.

    Logging is set up here, in the app factory, rather than handed to uvicorn
    as a config to apply: uvicorn applies that before a new worker answers its
    health checks, and importing our formatters means importing the whole
    service, which on a busy machine took longer than the check allows.
    """
    from .app import create_app

    settings = _settings()
    _logging(settings)
    return create_app(settings)


def _metrics_dir(settings: Settings) -> None:
    """Multiprocess metrics: a fresh ``<instance>/prometheus`` for this run's workers.

    Set before anything imports prometheus-client, which reads it at import.
    """
    import shutil

    from .metrics import MULTIPROC_ENV

    directory = (settings.instance_dir / "prometheus").resolve()
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(directory)


def _public_url(url: str) -> str:
    """``url`` with any password replaced by ``***``: fit for a log line."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _log_start(args: argparse.Namespace, settings: Settings, redis: str) -> None:
    from .api.home import service_version

    fields = {
        "address": f"http://{args.host}:{args.port}",
        "version": service_version(),
        "workers": args.workers,
        "database": _public_url(settings.sqlalchemy_url),
        "redis": redis,
        "token_location": ",".join(settings.token_location),
        "registration": settings.allow_registration,
        "access_ttl": settings.access_ttl,
        "refresh_ttl": settings.refresh_ttl,
        "idle_timeout": settings.idle_timeout,
        "max_sessions": settings.max_sessions,
        "signing_key": "TOKENGATE_SECRET_KEY" if settings.secret_key else "instance file",
        "log_format": settings.log_format,
    }
    log.info("tokengate serving on %s", fields["address"], extra={"fields": fields})


def cmd_db_upgrade(_: argparse.Namespace) -> int:
    from .db.migrate import upgrade

    settings = _settings()
    settings.instance_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.sqlalchemy_url)
    print("database is at the latest revision")
    return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def cmd_serve(args: argparse.Namespace) -> int:
    from .app import load_or_create_secret
    from .db.migrate import upgrade
    from .store.embedded import EmbeddedRedis

    settings = _settings()
    settings.instance_dir.mkdir(parents=True, exist_ok=True)
    _metrics_dir(settings)
    _logging(settings)
    upgrade(settings.sqlalchemy_url)
    if settings.secret_key is None:
        # Made here, once, so that the workers all read the same key.
        load_or_create_secret(settings.instance_dir)
    embedded = None
    redis = _public_url(settings.redis_url or "")
    if settings.redis_url is None:
        # One private redis-server for all the workers, started and stopped here.
        embedded = EmbeddedRedis(settings.instance_dir / "redis")
        os.environ["TOKENGATE_REDIS_URL"] = embedded.start()
        redis = f"embedded ({embedded.socket_path})"
    # uvicorn re-raises the SIGTERM it shut down on once it is done; as an
    # exception here it unwinds through the ``finally`` that stops Redis,
    # where the default action would end the process before it.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        _log_start(args, settings, redis)
        import uvicorn

        uvicorn.run(
            f"{__package__}.__main__:serve_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            lifespan="on",
            log_config=None,  # serve_app configures logging in each worker
            log_level="info",
            # tokengate.access writes the access log, with user and session.
            access_log=False,
            proxy_headers=False,
        )
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def cmd_users_create(args: argparse.Namespace) -> int:
    from .app import create_app
    from .errors import ApiError
    from .guard import get_gate

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password (again): ") != password:
            print("tokengate: the passwords do not match", file=sys.stderr)
            return 1
    settings = _settings()
    from .db.migrate import upgrade

    settings.instance_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.sqlalchemy_url)

    async def create() -> int:
        app = create_app(settings)
        async with app.app_context():
            gate = get_gate()
            await gate.startup()
            try:
                user = await gate.accounts.register(args.username, password)
            except ApiError as exc:
                print(f"tokengate: {exc.description}", file=sys.stderr)
                return 1
            finally:
                await gate.shutdown()
        print(f"created user {user.username} (id {user.id})")
        return 0

    return asyncio.run(create())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tokengate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service (applies pending migrations first)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(func=cmd_serve)

    db = sub.add_parser("db", help="database commands")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_up = db_sub.add_parser("upgrade", help="alembic upgrade head")
    db_up.set_defaults(func=cmd_db_upgrade)

    users = sub.add_parser("users", help="user commands")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    create = users_sub.add_parser("create", help="create a user")
    create.add_argument("username")
    create.add_argument("--password-stdin", action="store_true")
    create.set_defaults(func=cmd_users_create)

    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
