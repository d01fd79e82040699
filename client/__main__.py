"""Command line: ``python -m client login | request | logout``.

The tokens and the service's base URL live in a ``FileTokenStore``:
``$XDG_CONFIG_HOME/tokengate/tokens.json`` (``~/.config/tokengate/tokens.json``
when that is unset), or the file ``--token-file`` names.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from ._client import AuthClient
from ._exceptions import AuthError, InvalidCredentials, LoginRequired, RateLimited
from ._store import FileTokenStore

PROG = "python -m client"


def default_token_file() -> Path:
    """``$XDG_CONFIG_HOME/tokengate/tokens.json``, else under ``~/.config``."""
    config = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(config) if config and Path(config).is_absolute() else Path.home() / ".config"
    return base / "tokengate" / "tokens.json"


def fail(message: str) -> int:
    print(f"tokengate: {message}", file=sys.stderr)
    return 1


def explain(exc: AuthError) -> str:
    if isinstance(exc, InvalidCredentials):
        return "the username or password is wrong"
    if isinstance(exc, RateLimited):
        return str(exc)
    if isinstance(exc, LoginRequired):
        return f"not logged in ({exc.code}): run `{PROG} login --base-url URL --username U`"
    return str(exc)


def cmd_login(args: argparse.Namespace, store: FileTokenStore) -> int:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"Password for {args.username}: ")
    try:
        with AuthClient(base_url=args.base_url, token_store=store) as api:
            tokens = api.login(args.username, password, device=args.device)
    except AuthError as exc:
        return fail(explain(exc))
    except httpx.HTTPError as exc:
        return fail(f"could not reach {args.base_url}: {exc}")
    store.base_url = args.base_url
    print(f"logged in as {args.username} (session {tokens.session_id}); tokens in {store.path}")
    return 0


def cmd_request(args: argparse.Namespace, store: FileTokenStore) -> int:
    base_url = args.base_url or store.base_url
    if not base_url:
        return fail(f"no service known: run `{PROG} login --base-url URL --username U` first")
    body: Any = None
    if args.json is not None:
        try:
            body = json.loads(args.json)
        except ValueError as exc:
            return fail(f"--json is not valid JSON: {exc}")
    try:
        with AuthClient(base_url=base_url, token_store=store) as api:
            response = api.request(args.method.upper(), args.path, json=body)
    except AuthError as exc:
        return fail(explain(exc))
    except httpx.HTTPError as exc:
        return fail(f"could not reach {base_url}: {exc}")
    if response.content:
        try:
            print(json.dumps(response.json(), indent=2, ensure_ascii=False))
        except ValueError:
            print(response.text)
    if response.is_error:
        return fail(f"{response.status_code} {response.reason_phrase}")
    return 0


def cmd_logout(args: argparse.Namespace, store: FileTokenStore) -> int:
    base_url = args.base_url or store.base_url
    if not base_url or store.load() is None:
        print("not logged in")
        return 0
    try:
        with AuthClient(base_url=base_url, token_store=store) as api:
            api.logout()
    except AuthError as exc:
        return fail(explain(exc))
    except httpx.HTTPError as exc:
        return fail(f"could not reach {base_url}: {exc}")
    print("logged out")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--token-file",
        type=Path,
        default=argparse.SUPPRESS,
        help=f"where the tokens live (default {default_token_file()})",
    )
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)

    login = sub.add_parser("login", parents=[common], help="log in and store the tokens")
    login.add_argument("--base-url", required=True, help="the service, e.g. http://127.0.0.1:8000")
    login.add_argument("--username", required=True)
    login.add_argument("--device", default=None, help="a name for this session")
    login.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    login.set_defaults(func=cmd_login)

    request = sub.add_parser(
        "request", parents=[common], help="send one authenticated request, print the JSON"
    )
    request.add_argument("method", help="GET, POST, PUT, PATCH, DELETE...")
    request.add_argument("path", help="e.g. /auth/me")
    request.add_argument("--json", default=None, help="a JSON request body")
    request.add_argument("--base-url", default=None, help="override the stored base URL")
    request.set_defaults(func=cmd_request)

    logout = sub.add_parser("logout", parents=[common], help="end the session, forget the tokens")
    logout.add_argument("--base-url", default=None, help="override the stored base URL")
    logout.set_defaults(func=cmd_logout)

    args = parser.parse_args(argv)
    store = FileTokenStore(getattr(args, "token_file", None) or default_token_file())
    result: int = args.func(args, store)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
