"""tokengate: run the service and administer its accounts.

tokengate serve runs the service; tokengate db upgrade applies the migrations;
tokengate users ... and tokengate sessions ... administer accounts and sessions;
tokengate keys rotate rotates the signing keys.
Settings come from TOKENGATE_* variables.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .admin_cli import (
    CommandError,
    add_admin_commands,
    add_api_key_commands,
    load_settings,
    migrate,
)
from .settings import Settings

if TYPE_CHECKING:
    from quart import Quart


log = logging.getLogger("tokengate")


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

    settings = load_settings()
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


def cmd_db_upgrade(_: argparse.Namespace) -> int:
    migrate(load_settings())
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

    settings = load_settings()
    if settings.secret_key is not None:
        print(
            "tokengate: TOKENGATE_SECRET_KEY is set, so the key is that secret: to rotate, "
            "change it (tokens signed with the old one stop verifying)",
            file=sys.stderr,
        )
        return 1
    migrate(settings)

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

    settings = load_settings()
    settings.instance_dir.mkdir(parents=True, exist_ok=True)
    _metrics_dir(settings)
    _logging(settings)
    migrate(settings)
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
            # uvloop, accepting bursts of new connections at once (serving.py).
            loop=f"{__package__}.serving:new_event_loop",
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

    add_admin_commands(sub)
    add_api_key_commands(sub)

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
