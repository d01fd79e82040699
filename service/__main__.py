"""Command line: ``python -m service serve | db upgrade | users create``."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys
from collections.abc import Sequence

from .settings import Settings, SettingsError

log = logging.getLogger("tokengate")


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        for line in exc.problems:
            print(f"tokengate: {line}", file=sys.stderr)
        raise SystemExit(2) from None


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def cmd_db_upgrade(_: argparse.Namespace) -> int:
    from .db.migrate import upgrade

    settings = _settings()
    settings.instance_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.sqlalchemy_url)
    print("database is at the latest revision")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .app import load_or_create_secret
    from .db.migrate import upgrade
    from .store.embedded import EmbeddedRedis

    settings = _settings()
    _logging()
    settings.instance_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.sqlalchemy_url)
    if settings.secret_key is None:
        # Made here, once, so that the workers all read the same key.
        load_or_create_secret(settings.instance_dir)
    embedded = None
    if settings.redis_url is None:
        # One private redis-server for all the workers, started and stopped here.
        embedded = EmbeddedRedis(settings.instance_dir / "redis")
        os.environ["TOKENGATE_REDIS_URL"] = embedded.start()
    try:
        import uvicorn

        uvicorn.run(
            "service.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            lifespan="on",
            log_level="warning",
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
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
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
