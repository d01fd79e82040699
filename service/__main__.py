"""tokengate: run the service and administer its accounts.

tokengate serve runs the service; tokengate db upgrade applies the migrations;
tokengate users ... and tokengate sessions ... administer accounts and sessions;
tokengate keys rotate rotates the signing keys.
Settings come from TOKENGATE_* variables.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from .settings import Settings, SettingsError

if TYPE_CHECKING:
    from quart import Quart

    from .app import TokenGate

log = logging.getLogger("tokengate")


class CommandError(Exception):
    """A command failed; the message is the one line printed."""


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


def _log_start(args: argparse.Namespace, settings: Settings, redis: str) -> None:
    from .api.home import service_version
    from .errors import mask_url

    fields = {
        "address": f"http://{args.host}:{args.port}",
        "version": service_version(),
        "workers": args.workers,
        "database": mask_url(settings.sqlalchemy_url),
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


def _migrate(settings: Settings) -> None:
    """Apply pending migrations (under the database's lock), or fail with one line."""
    from .db.migrate import upgrade
    from .errors import describe, mask_url

    settings.instance_dir.mkdir(parents=True, exist_ok=True)
    try:
        upgrade(settings.sqlalchemy_url)
    except Exception as exc:
        url = mask_url(settings.sqlalchemy_url)
        raise CommandError(f"cannot migrate the database {url}: {describe(exc)}") from exc


def cmd_db_upgrade(_: argparse.Namespace) -> int:
    _migrate(_settings())
    print("database is at the latest revision")
    return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


async def _prepare_keys(settings: Settings) -> None:
    """Load (creating on first start) the signing keys, once, before the workers start."""
    import time

    from .app import read_legacy_secret
    from .db.engine import build_engine, build_sessionmaker
    from .keys import KeyRing

    engine = build_engine(settings.sqlalchemy_url)
    try:
        legacy = None
        if settings.algorithm == "HS256":
            legacy = read_legacy_secret(settings.instance_dir)
        await KeyRing(settings, build_sessionmaker(engine), time.time).load(legacy)
    finally:
        await engine.dispose()


def cmd_keys_rotate(_: argparse.Namespace) -> int:
    import time

    from .db.engine import build_engine, build_sessionmaker
    from .keys import ACTIVATION_DELAY, ensure_keys, rotate_keys

    settings = _settings()
    if settings.secret_key is not None:
        print(
            "tokengate: TOKENGATE_SECRET_KEY is set, so the key is that secret: to rotate, "
            "change it (tokens signed with the old one stop verifying)",
            file=sys.stderr,
        )
        return 1
    _migrate(settings)

    async def rotate() -> str:
        engine = build_engine(settings.sqlalchemy_url)
        try:
            sessions = build_sessionmaker(engine)
            await ensure_keys(sessions, settings.algorithm, time.time())
            return (await rotate_keys(sessions, settings, time.time())).kid
        finally:
            await engine.dispose()

    kid = asyncio.run(rotate())
    print(
        f"new {settings.algorithm} signing key {kid}: published now, signing in "
        f"{ACTIVATION_DELAY} seconds on every instance; tokens signed with older keys "
        "stay valid until they expire"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .store.embedded import EmbeddedRedis

    settings = _settings()
    settings.instance_dir.mkdir(parents=True, exist_ok=True)
    _metrics_dir(settings)
    _logging(settings)
    _migrate(settings)
    if settings.secret_key is None:
        # Made here, once, before the workers start (they would agree anyway).
        asyncio.run(_prepare_keys(settings))
    embedded = None
    from .errors import mask_url

    redis = mask_url(settings.redis_url or "")
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


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password = getpass.getpass("Password: ")
    if getpass.getpass("Password (again): ") != password:
        raise CommandError("the passwords do not match")
    return password


@contextlib.asynccontextmanager
async def _started(settings: Settings) -> AsyncIterator[TokenGate]:
    """The extension started on the configured database and Redis, as a worker starts it."""
    from .app import create_app
    from .guard import get_gate

    app = create_app(settings)
    async with app.app_context():
        gate = get_gate()
        await gate.startup()
        try:
            yield gate
        finally:
            await gate.shutdown()


def _run(work: Callable[[TokenGate], Awaitable[int]]) -> int:
    """Start the extension, run ``work`` on it, and turn failures into one line."""
    from .admin import AdminError
    from .errors import ApiError, describe, is_infrastructure_failure

    settings = _settings()

    async def main() -> int:
        async with _started(settings) as gate:
            return await work(gate)

    try:
        return asyncio.run(main())
    except (AdminError, CommandError) as exc:
        raise CommandError(str(exc)) from exc
    except ApiError as exc:
        raise CommandError(str(exc.description)) from exc
    except Exception as exc:
        if is_infrastructure_failure(exc):
            raise CommandError(f"the database or Redis cannot be reached: {describe(exc)}") from exc
        from .app import SchemaNotReady

        if isinstance(exc, SchemaNotReady):
            raise CommandError(str(exc)) from exc
        raise


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _when(value: Any) -> str:
    return str(value.isoformat(timespec="seconds").replace("+00:00", "Z"))


def cmd_users_create(args: argparse.Namespace) -> int:
    password = _read_password(args)
    settings = _settings()
    if settings.database_url is None:
        _migrate(settings)

    async def work(gate: TokenGate) -> int:
        user = await gate.accounts.register(args.username, password)
        print(f"created user {user.username} (id {user.id})")
        return 0

    return _run(work)


def cmd_users_list(args: argparse.Namespace) -> int:
    from .admin import list_users

    async def work(gate: TokenGate) -> int:
        users = await list_users(gate)
        if args.json:
            _print_json([user.to_json() for user in users])
            return 0
        _table(
            [
                [
                    str(u.id),
                    u.username,
                    "disabled" if u.disabled else "active",
                    str(u.live_sessions),
                    " ".join(u.scopes) or "-",
                    _when(u.created_at),
                ]
                for u in users
            ],
            ["ID", "USERNAME", "STATUS", "SESSIONS", "SCOPES", "CREATED"],
        )
        return 0

    return _run(work)


def cmd_users_set_password(args: argparse.Namespace) -> int:
    from .admin import set_password

    password = _read_password(args)

    async def work(gate: TokenGate) -> int:
        await set_password(gate, args.username, password)
        print(f"set the password of {args.username}; every session of the user has ended")
        return 0

    return _run(work)


def cmd_users_unlock(args: argparse.Namespace) -> int:
    from .admin import unlock

    async def work(gate: TokenGate) -> int:
        await unlock(gate, args.username)
        print(f"unlocked {args.username}: failed logins are forgotten")
        return 0

    return _run(work)


def _cmd_users_disabled(disabled: bool) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        from .admin import set_disabled

        async def work(gate: TokenGate) -> int:
            await set_disabled(gate, args.username, disabled)
            if disabled:
                print(f"disabled {args.username}; every session of the user has ended")
            else:
                print(f"enabled {args.username}")
            return 0

        return _run(work)

    return command


def _cmd_users_scopes(grant: bool) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        from .admin import change_scopes

        async def work(gate: TokenGate) -> int:
            scopes = await change_scopes(gate, args.username, args.scopes, grant=grant)
            print(f"{args.username} has scopes: {' '.join(scopes) or '(none)'}")
            return 0

        return _run(work)

    return command


def cmd_sessions_list(args: argparse.Namespace) -> int:
    from .admin import list_sessions

    async def work(gate: TokenGate) -> int:
        found = await list_sessions(gate, args.username)
        if args.json:
            _print_json([{k: v for k, v in s.to_json().items() if k != "current"} for s in found])
            return 0
        _table(
            [
                [
                    s.id,
                    _when(s.created_at),
                    _when(s.last_seen_at),
                    s.device or "-",
                    s.ip or "-",
                    s.user_agent or "-",
                ]
                for s in found
            ],
            ["ID", "CREATED", "LAST SEEN", "DEVICE", "IP", "USER AGENT"],
        )
        return 0

    return _run(work)


def cmd_sessions_end(args: argparse.Namespace) -> int:
    from .admin import end_session

    async def work(gate: TokenGate) -> int:
        if await end_session(gate, args.session_id):
            print(f"ended session {args.session_id}")
        else:
            print(f"session {args.session_id} had already ended")
        return 0

    return _run(work)


def build_parser() -> argparse.ArgumentParser:
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
    db_up = db_sub.add_parser("upgrade", help="apply the shipped migrations")
    db_up.set_defaults(func=cmd_db_upgrade)

    users = sub.add_parser("users", help="account administration")
    users_sub = users.add_subparsers(dest="users_command", required=True)

    def user_command(name: str, help_text: str, func: Callable[[argparse.Namespace], int]) -> Any:
        command = users_sub.add_parser(name, help=help_text)
        command.add_argument("username")
        command.set_defaults(func=func)
        return command

    create = user_command("create", "create a user", cmd_users_create)
    create.add_argument("--password-stdin", action="store_true")
    listing = users_sub.add_parser("list", help="list the users")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_users_list)
    password = user_command(
        "set-password", "set a user's password (every session ends)", cmd_users_set_password
    )
    password.add_argument("--password-stdin", action="store_true")
    user_command("unlock", "clear a user's failed-login throttle", cmd_users_unlock)
    user_command(
        "disable", "refuse a user's logins and end every session", _cmd_users_disabled(True)
    )
    user_command("enable", "allow a disabled user to log in again", _cmd_users_disabled(False))
    grant = user_command("grant", "add scopes to a user", _cmd_users_scopes(True))
    grant.add_argument("scopes", nargs="+", metavar="SCOPE")
    ungrant = user_command("ungrant", "remove scopes from a user", _cmd_users_scopes(False))
    ungrant.add_argument("scopes", nargs="+", metavar="SCOPE")

    sessions = sub.add_parser("sessions", help="session administration")
    sessions_sub = sessions.add_subparsers(dest="sessions_command", required=True)
    s_list = sessions_sub.add_parser("list", help="a user's live sessions")
    s_list.add_argument("username")
    s_list.add_argument("--json", action="store_true", help="print JSON")
    s_list.set_defaults(func=cmd_sessions_list)
    s_end = sessions_sub.add_parser("end", help="end one session")
    s_end.add_argument("session_id")
    s_end.set_defaults(func=cmd_sessions_end)

    keys = sub.add_parser("keys", help="signing key commands")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    rotate = keys_sub.add_parser("rotate", help="sign with a new key from a few seconds on")
    rotate.set_defaults(func=cmd_keys_rotate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except CommandError as exc:
        print(f"tokengate: {exc}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    raise SystemExit(main())
