"""``tokengate users ...`` and ``tokengate sessions ...``: the account administration commands.

Each command starts the extension on the configured database and Redis, as a
worker would, and does its work through ``admin.py``; failures become one
line on standard error and exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import TokenGate
    from .db.migrate import Applied
    from .settings import Settings


class CommandError(Exception):
    """A command failed; the message is the one line printed."""


def load_settings() -> Settings:
    """The settings from ``TOKENGATE_*``, or exit 2 with one line per problem."""
    from .settings import Settings, SettingsError

    try:
        return Settings.from_env()
    except SettingsError as exc:
        for line in exc.problems:
            print(f"tokengate: {line}", file=sys.stderr)
        raise SystemExit(2) from None


def migrate(settings: Settings) -> list[Applied]:
    """Apply pending migrations (under the database's lock), or fail with one line.

    Returns the revisions applied, oldest first (none when already at the latest).
    """
    from . import instance
    from .db.migrate import upgrade
    from .errors import describe, mask_url

    instance.prepare(settings)
    try:
        return upgrade(settings.sqlalchemy_url)
    except Exception as exc:
        url = mask_url(settings.sqlalchemy_url)
        raise CommandError(f"cannot migrate the database {url}: {describe(exc)}") from exc


def _read_password(args: argparse.Namespace) -> str:
    """The new password: one line of standard input, or typed twice at the terminal."""
    if args.password_stdin:
        line = sys.stdin.readline()
        if not line:
            raise CommandError("no password on standard input (--password-stdin reads one line)")
        return line.rstrip("\r\n")
    import getpass
    import warnings

    try:
        with warnings.catch_warnings():
            # getpass warns, then reads standard input with echo, when there is no terminal.
            warnings.simplefilter("error", getpass.GetPassWarning)
            password = getpass.getpass("Password: ")
            again = getpass.getpass("Password (again): ")
    except getpass.GetPassWarning:
        raise CommandError(
            "no terminal to ask for the password on: pipe it in with --password-stdin"
        ) from None
    except EOFError:
        raise CommandError("no password given (input ended)") from None
    if again != password:
        raise CommandError("the passwords do not match")
    return password


@contextlib.asynccontextmanager
async def _started(settings: Settings) -> AsyncIterator[TokenGate]:
    """The extension started on the configured database and Redis, as a worker starts it,
    but for near checks: a command answers no request, so it holds no lease either (its
    ends still wait for the serving instances' acknowledgements)."""
    from .app import create_app
    from .guard import get_gate

    app = create_app(dataclasses.replace(settings, near_cache=False))
    async with app.app_context():
        gate = get_gate()
        await gate.startup()
        try:
            yield gate
        finally:
            await gate.shutdown()


def _run(work: Callable[[TokenGate], Awaitable[int]]) -> int:
    """Start the extension, run ``work`` on it, and turn failures into one line."""
    import asyncio

    from .admin import AdminError
    from .errors import ApiError, describe, is_infrastructure_failure
    from .sealing import SealingError

    settings = load_settings()

    async def main() -> int:
        async with _started(settings) as gate:
            return await work(gate)

    try:
        return asyncio.run(main())
    except (AdminError, CommandError, SealingError) as exc:
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
    settings = load_settings()
    if settings.database_url is None:
        migrate(settings)

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


def cmd_keys_rewrap(args: argparse.Namespace) -> int:
    """Move every stored signing key and server secret to the current key-encryption key."""
    import asyncio
    from pathlib import Path

    from .db.engine import build_engine, build_sessionmaker
    from .errors import describe, is_infrastructure_failure
    from .keys import rewrap_keys
    from .sealing import SealingError, load_keks

    settings = load_settings()
    migrate(settings)

    async def rewrap() -> tuple[int, int]:
        engine = build_engine(settings.sqlalchemy_url)
        try:
            return await rewrap_keys(build_sessionmaker(engine), keks)
        finally:
            await engine.dispose()

    try:
        keks = load_keks(settings, [Path(p) for p in args.from_file])
        moved, stored = asyncio.run(rewrap())
    except SealingError as exc:
        raise CommandError(str(exc)) from None
    except Exception as exc:
        if is_infrastructure_failure(exc):
            raise CommandError(f"the database cannot be reached: {describe(exc)}") from exc
        raise
    print(
        f"{stored} stored keys (signing keys, the API-key digest secret) wrapped under "
        f"key-encryption key {keks.current.id} ({moved} moved to it); no stored key needs "
        "an older key-encryption key now"
    )
    return 0


def add_rewrap_command(keys_sub: Any) -> None:
    """Add ``keys rewrap`` to the ``tokengate keys`` commands."""
    rewrap = keys_sub.add_parser(
        "rewrap",
        help="wrap every stored signing key and server secret under "
        "TOKENGATE_KEY_ENCRYPTION_KEY (or the "
        "instance's key file), reading them with it, TOKENGATE_OLD_KEY_ENCRYPTION_KEY "
        "and --from-file",
    )
    rewrap.add_argument(
        "--from-file",
        action="append",
        default=[],
        metavar="FILE",
        help="a file holding an older key-encryption key (base64url); may be repeated",
    )
    rewrap.set_defaults(func=cmd_keys_rewrap)


FROM_STDIN_HELP = "read the password from one line of standard input instead of prompting"


def add_admin_commands(sub: Any) -> None:
    """Add ``users ...`` and ``sessions ...`` to the ``tokengate`` command line."""
    users = sub.add_parser("users", help="account administration")
    users_sub = users.add_subparsers(dest="users_command", required=True)

    def user_command(name: str, help_text: str, func: Callable[[argparse.Namespace], int]) -> Any:
        command = users_sub.add_parser(name, help=help_text)
        command.add_argument("username")
        command.set_defaults(func=func)
        return command

    create = user_command("create", "create a user", cmd_users_create)
    create.add_argument("--password-stdin", action="store_true", help=FROM_STDIN_HELP)
    listing = users_sub.add_parser("list", help="list the users")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_users_list)
    password = user_command(
        "set-password", "set a user's password (every session ends)", cmd_users_set_password
    )
    password.add_argument("--password-stdin", action="store_true", help=FROM_STDIN_HELP)
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


# -- tokengate api-keys ... ---------------------------------------------------------
def cmd_api_keys_create(args: argparse.Namespace) -> int:
    from .admin import user_id_of

    async def work(gate: TokenGate) -> int:
        user_id = await user_id_of(gate, args.username)
        created = await gate.api_keys.create(user_id, args.name, args.scope, args.expires_in)
        # The key alone on standard output (a script captures it); the rest on stderr.
        print(created.key)
        print(
            f"created API key {created.id} for {args.username}, expires "
            f"{_when(created.expires_at)}; it is shown this once",
            file=sys.stderr,
        )
        return 0

    return _run(work)


def cmd_api_keys_list(args: argparse.Namespace) -> int:
    from .admin import user_id_of
    from .credentials.manager import key_info

    async def work(gate: TokenGate) -> int:
        rows = [
            key_info(row) for row in await gate.api_keys.list(await user_id_of(gate, args.username))
        ]
        if args.json:
            _print_json(rows)
            return 0
        _table(
            [
                [
                    k["id"], k["name"], " ".join(k["scopes"]) or "-", k["expires_at"],
                    k["last_used_at"] or "-", k["last_used_ip"] or "-",
                    f"revoked ({k['revoked_why']})" if k["revoked_at"] else "live",
                ]
                for k in rows
            ],
            ["ID", "NAME", "SCOPES", "EXPIRES", "LAST USED", "FROM", "STATE"],
        )  # fmt: skip
        return 0

    return _run(work)


def cmd_api_keys_revoke(args: argparse.Namespace) -> int:
    async def work(gate: TokenGate) -> int:
        if await gate.api_keys.revoke(args.key_id, owner=None):
            print(f"revoked API key {args.key_id}")
        else:
            print(f"API key {args.key_id} was revoked already")
        return 0

    return _run(work)


def add_api_key_commands(sub: Any) -> None:
    """Add ``api-keys create|list|revoke`` to the ``tokengate`` command line."""
    keys = sub.add_parser("api-keys", help="users' API keys")
    keys_sub = keys.add_subparsers(dest="api_keys_command", required=True)
    create = keys_sub.add_parser("create", help="make an API key (printed once, on stdout alone)")
    create.add_argument("username")
    create.add_argument("--name", required=True)
    create.add_argument("--scope", action="append", default=[], metavar="S")
    create.add_argument("--expires-in", type=int, default=None, metavar="SECONDS")
    create.set_defaults(func=cmd_api_keys_create)
    listing = keys_sub.add_parser("list", help="a user's API keys")
    listing.add_argument("username")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_api_keys_list)
    revoke = keys_sub.add_parser("revoke", help="revoke an API key")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=cmd_api_keys_revoke)
