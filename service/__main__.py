"""tokengate: run the service and administer its accounts.

tokengate serve runs the service; tokengate db upgrade applies the migrations;
tokengate users ... and tokengate sessions ... administer accounts and sessions;
tokengate keys rotate rotates the signing keys; tokengate keys rewrap moves them to a new
key-encryption key.
Settings come from TOKENGATE_* variables.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from .admin_cli import (
    CommandError,
    add_admin_commands,
    add_api_key_commands,
    add_rewrap_command,
    load_settings,
    migrate,
)
from .oauth.admin_cli import add_client_commands

if TYPE_CHECKING:
    from quart import Quart

    from .db.migrate import Applied
    from .settings import Settings


log = logging.getLogger("tokengate")

SERVER_EXTRA = 'pip install "quart-tokengate[server]"'
# What a base install (the client alone) lacks; looked up, not imported.
SERVER_MODULES = ("quart", "sqlalchemy", "alembic", "redis", "uvicorn", "dotenv")


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
    from .serving import ConnectionLimits, use_limits

    settings = load_settings()
    _logging(settings)
    use_limits(ConnectionLimits.from_settings(settings))
    return create_app(settings)


def _metrics_dir(settings: Settings) -> None:
    """Multiprocess metrics: a fresh ``<instance>/prometheus`` for this run's workers.

    Set before anything imports prometheus-client, which reads it at import.
    """
    import shutil

    from .instance import private_dir
    from .metrics import MULTIPROC_ENV

    directory = (settings.instance_dir / "prometheus").resolve()
    shutil.rmtree(directory, ignore_errors=True)
    private_dir(directory)
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
        "header_timeout": settings.header_timeout,
        "body_timeout": settings.body_timeout,
        "max_connections": settings.max_connections,
        "signing_key": "TOKENGATE_SECRET_KEY" if settings.secret_key else "database",
        # Where the KEK of the keys in the database comes from (never the key).
        "key_encryption_key": (
            "-"
            if settings.secret_key
            else "TOKENGATE_KEY_ENCRYPTION_KEY"
            if settings.key_encryption_key
            else "instance file"
        ),
        "log_format": settings.log_format,
    }
    log.info("tokengate serving on %s", fields["address"], extra={"fields": fields})


def _raise_file_limit(settings: Settings) -> None:
    """Let each worker open as many files as the system allows (its workers inherit it).

    Each connection is a descriptor: the common soft limit of 1024 would run
    out before TOKENGATE_MAX_CONNECTIONS, and a worker out of descriptors
    cannot even accept the connection it would refuse.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    # Beyond the connections: Redis and database pools, logs, the listening socket.
    wanted = settings.max_connections + 512
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning(
            "the open-file limit (%d) is below TOKENGATE_MAX_CONNECTIONS (%d) + 512: "
            "raise it (ulimit -n) or lower the setting",
            soft,
            settings.max_connections,
        )


def cmd_db_upgrade(_: argparse.Namespace) -> int:
    from .db.migrate import head_revisions

    applied = migrate(load_settings())
    head = ", ".join(sorted(head_revisions()))
    for revision, title in applied:
        print(f"applied revision {revision}: {title}")
    if applied:
        print(f"the database is at the latest revision ({head})")
    else:
        print(f"the database is already at the latest revision ({head}): nothing to apply")
    return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


async def _prepare_keys(settings: Settings) -> None:
    """Load (creating on first start) the signing keys, once, before the workers start."""
    import time

    from .app import read_legacy_secret
    from .db.engine import build_engine, build_sessionmaker
    from .keys import KeyRing
    from .sealing import SealingError

    engine = build_engine(settings.sqlalchemy_url)
    try:
        legacy = None
        if settings.algorithm == "HS256":
            legacy = read_legacy_secret(settings.instance_dir)
        await KeyRing(settings, build_sessionmaker(engine), time.time).load(legacy)
    except SealingError as exc:
        raise CommandError(str(exc)) from None
    finally:
        await engine.dispose()


def cmd_keys_rotate(_: argparse.Namespace) -> int:
    import asyncio
    import time

    from .db.engine import build_engine, build_sessionmaker
    from .keys import ACTIVATION_DELAY, ensure_keys, rotate_keys
    from .sealing import SealingError, load_keks

    settings = load_settings()
    if settings.secret_key is not None:
        print(
            "tokengate: TOKENGATE_SECRET_KEY is set, so the key is that secret: to rotate, "
            "change it (tokens signed with the old one stop verifying)",
            file=sys.stderr,
        )
        return 1
    migrate(settings)
    try:
        keks = load_keks(settings)
    except SealingError as exc:
        raise CommandError(str(exc)) from None

    async def rotate() -> str:
        engine = build_engine(settings.sqlalchemy_url)
        try:
            sessions = build_sessionmaker(engine)
            await ensure_keys(sessions, settings.algorithm, time.time(), keks)
            return (await rotate_keys(sessions, settings, time.time(), keks)).kid
        finally:
            await engine.dispose()

    kid = asyncio.run(rotate())
    print(
        f"new {settings.algorithm} signing key {kid}: published now, signing in "
        f"{ACTIVATION_DELAY} seconds on every instance; tokens signed with older keys "
        "stay valid until they expire"
    )
    return 0


def check_address(host: str, port: int) -> None:
    """Fail with one line, before anything else starts, if ``host:port`` cannot be listened on.

    The server binds it much later (after migrations, keys and the embedded
    Redis); a port in use is better said first. Bound as uvicorn binds it
    (``SO_REUSEADDR``), then released.
    """
    import socket

    where = f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise CommandError(f"cannot listen on {where}: {exc.strerror}") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            raise CommandError(f"cannot listen on {where}: {reason}") from None


def _log_applied(applied: list[Applied]) -> None:
    for revision, title in applied:
        log.info("applied database revision %s: %s", revision, title)


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    settings = load_settings()
    check_address(args.host, args.port)
    from . import instance
    from .store.embedded import EmbeddedRedis

    # Everything this process and its workers write (the database, the
    # private Redis's files, metrics, the outbox) is for the service alone.
    os.umask(0o077)
    instance.prepare(settings)
    _metrics_dir(settings)
    _logging(settings)
    _log_applied(migrate(settings))
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
        _raise_file_limit(settings)
        _log_start(args, settings, redis)
        import uvicorn

        uvicorn.run(
            f"{__package__}.__main__:serve_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            # uvloop, accepting bursts of new connections at once (serving.py).
            loop=f"{__package__}.serving:new_event_loop",
            # httptools, with deadlines on receiving a request and a connection
            # limit (serving.py); no WebSocket routes, so no upgrades.
            http=f"{__package__}.serving:BoundedHttpProtocol",
            ws="none",
            server_header=False,
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


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error said in one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def port_number(text: str) -> int:
    """A TCP port, 1 to 65535 (``--port``)."""
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"{text} is not a TCP port (1 to 65535)")
    return value


def positive(text: str) -> int:
    """A whole number of at least 1 (``--workers``)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``tokengate`` command line; building it imports none of the service."""
    parser = Parser(
        prog="tokengate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the service (applies pending migrations first)",
        description="Run the service on a production ASGI server (uvicorn), after applying "
        "pending migrations. Settings come from TOKENGATE_* variables.",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    serve.add_argument(
        "--port",
        type=port_number,
        default=8000,
        help="TCP port to listen on (default: %(default)s)",
    )
    serve.add_argument(
        "--workers",
        type=positive,
        default=1,
        help="worker processes, sharing the port (default: %(default)s)",
    )
    serve.set_defaults(func=cmd_serve)

    db = sub.add_parser("db", help="database commands")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_up = db_sub.add_parser("upgrade", help="apply the shipped migrations")
    db_up.set_defaults(func=cmd_db_upgrade)

    add_admin_commands(sub)
    add_api_key_commands(sub)
    add_client_commands(sub)

    keys = sub.add_parser("keys", help="signing key commands")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    rotate = keys_sub.add_parser("rotate", help="sign with a new key from a few seconds on")
    rotate.set_defaults(func=cmd_keys_rotate)
    add_rewrap_command(keys_sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    missing = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"tokengate: the service is not installed ({missing[0]} is missing): {SERVER_EXTRA}",
            file=sys.stderr,
        )
        return 2
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except CommandError as exc:
        print(f"tokengate: {exc}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    raise SystemExit(main())
